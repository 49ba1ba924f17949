"""TensorFlow's process-wide knobs on the run's training step: oneDNN and the thread pools.

`TF_ENABLE_ONEDNN_OPTS` is read when TensorFlow loads and the thread pools are fixed
before the first op, so each variant runs in a process of its own; the variants take
turns, round after round, and each process times the step as a run configures it
(`bench.common.run_trainer`, `auto` settings unless `--precision` etc. say otherwise).
"defaults" is TensorFlow as run.py loads it: oneDNN on x86-64 (`device.prefer_onednn`).

    python -m bench.threads [--rounds=2] [--steps=10] [--precision=auto] [--variants=all]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.common import machine, report

VARIANTS = {
    "defaults": {},
    "TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "inter-op 1, intra-op 2": {"KREFINERY_BENCH_THREADS": "1,2"},
    "inter-op 1, intra-op 1": {"KREFINERY_BENCH_THREADS": "1,1"},
}


def child(steps: int, precision: str, jit: bool | None, deterministic: bool | None) -> None:
    """One variant's measurement, printed as JSON on the last line."""
    import tensorflow as tf

    threads = os.environ.get("KREFINERY_BENCH_THREADS")
    if threads:
        inter, intra = (int(n) for n in threads.split(","))
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    from bench.common import BATCH, describe, rate, run_trainer
    from bench.train_step import batches, step_config

    trainer, runtime = run_trainer(step_config(precision, jit, deterministic), steps)
    data, _ = batches(steps)
    trainer.fit(data.take(2), verbose=0)
    rates = [rate(lambda: trainer.fit(data, shuffle=False, verbose=0), steps * BATCH) for _ in range(2)]
    print(json.dumps({"rate": max(rates), "runtime": describe(runtime)}))


def main(
    rounds: int, steps: int, precision: str, jit: bool | None, deterministic: bool | None, variants: str
) -> None:
    print(f"# oneDNN and thread-pool settings, one process per variant; {machine()}")
    args = [f"--steps={steps}", f"--precision={precision}", "--child"]
    if jit is not None:
        args.append("--jit_compile" if jit else "--nojit_compile")
    if deterministic is not None:
        args.append("--deterministic" if deterministic else "--nodeterministic")
    names = VARIANTS if variants == "all" else ["defaults", *variants.split(";")]
    chosen = {name: VARIANTS[name] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    described = ""
    for round_ in range(rounds):
        for name, env in chosen.items():
            out = subprocess.run(
                [sys.executable, "-m", "bench.threads", *args],
                env={**os.environ, **env}, capture_output=True, text=True, check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            rates[name].append(result["rate"])
            described = result["runtime"]
            print(f"  round {round_ + 1}/{rounds}: {name} {result['rate']:.1f}", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["defaults"]
    report(
        f"{described}: images/s (best of 2 fits of {steps} steps per process), median of {rounds} rounds",
        [(name, f"{value:7.1f} img/s  {value / base:.2f}x defaults") for name, value in medians.items()],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--variants", default="all", help=f"';'-separated, besides defaults: {'; '.join(VARIANTS)}.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.precision, args.jit_compile, args.deterministic)
    else:
        main(args.rounds, args.steps, args.precision, args.jit_compile, args.deterministic, args.variants)
