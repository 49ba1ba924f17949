"""The project's training step on each Keras backend: TensorFlow vs JAX vs PyTorch.

One process cannot hold two Keras backends, so each backend gets a worker process that
builds our `Trainer` (ResNet-20, SGD with momentum) for every precision, compiles it
as a run does on that backend (op determinism on, `device.resolve_jit_compile`), and
warms it up; then this process asks the workers in turn, round after round, to
time `fit` over the same in-memory tf.data batches (as runs feed them), so only one
worker computes at a time and the contenders alternate. Medians and ratios to
TensorFlow are reported. A backend that is not installed is skipped.

    python -m bench.backends [--steps=8] [--rounds=3] [--precisions=float32,mixed_bfloat16]
                             [--backends=tensorflow,jax,torch]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = Path(__file__).resolve().parents[1]


def worker(precisions: list[str], steps: int) -> None:
    """Serves `RATE <precision>` requests on stdin with `<images/s>` lines on stdout."""
    import time

    import keras
    import tensorflow as tf

    from bench.common import BATCH, CLASSES, SHAPE, batched, synthetic_images
    from krefinery.core.resnet import build_resnet
    from krefinery.core.trainer import Trainer
    from krefinery.runtime.device import resolve_jit_compile

    images, labels = synthetic_images(steps * BATCH)
    data = batched({"image": images, "label": labels, "target": tf.one_hot(labels, CLASSES)}, BATCH).cache()
    tf.config.experimental.enable_op_determinism()  # As prepare_experiment does for runs.
    jit_compile = resolve_jit_compile(None)
    trainers = {}
    for precision in precisions:
        keras.utils.set_random_seed(0)
        classifier = build_resnet(SHAPE, CLASSES, depth=20, weight_decay=1e-4, precision=precision)
        trainer = Trainer(classifier)
        trainer.compile(keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit_compile)
        trainer.fit(data.take(2), verbose=0)  # Trace and compile outside the timing.
        trainers[precision] = trainer
    # What Keras compiled with: TensorFlow's op determinism turns XLA off there.
    compiled = {p: t.jit_compile for p, t in trainers.items()}
    print(f"READY {keras.backend.backend()} jit_compile asked {jit_compile}, used {compiled}", flush=True)
    for line in sys.stdin:
        precision = line.split()[1]
        start = time.perf_counter()
        trainers[precision].fit(data, verbose=0)
        print(f"{steps * BATCH / (time.perf_counter() - start):.2f}", flush=True)


def start_worker(backend: str, precisions: list[str], steps: int) -> subprocess.Popen | None:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "bench.backends", "--worker", f"--steps={steps}",
               f"--precisions={','.join(precisions)}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    ready = process.stdout.readline().strip()
    if not ready.startswith("READY"):
        process.kill()
        print(f"{backend}: did not start (not installed?)", flush=True)
        return None
    print(ready, flush=True)
    return process


def main(
    steps: int = 8,
    rounds: int = 3,
    precisions: str = "float32,mixed_bfloat16",
    backends: str = ",".join(BACKENDS),
) -> dict:
    import platform

    chosen = precisions.split(",")
    print(f"# Our train step per Keras backend: ResNet-20, 32x32x3, batch 128, {steps} steps "
          f"per measurement; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    # Started one after another, so compilations do not compete with each other.
    workers = {
        b: w for b in backends.split(",") if (w := start_worker(b, chosen, steps)) is not None
    }
    rates: dict[tuple[str, str], list[float]] = {(b, p): [] for b in workers for p in chosen}
    try:
        for round_ in range(rounds):
            for precision in chosen:
                for backend, process in workers.items():
                    process.stdin.write(f"RATE {precision}\n")
                    process.stdin.flush()
                    answer = process.stdout.readline()
                    if not answer:
                        raise RuntimeError(f"the {backend} worker exited mid-benchmark")
                    rates[backend, precision].append(float(answer))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{b}/{p} {v[-1]:.1f}" for (b, p), v in rates.items()), flush=True)
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    medians = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\n## images/s, median of {rounds} alternating rounds (ratio to TensorFlow)")
    for precision in chosen:
        base = medians.get(("tensorflow", precision))
        for backend in workers:
            value = medians[backend, precision]
            ratio = f"  {value / base:.2f}x" if base else ""
            print(f"  {precision:15s} {backend:11s} {value:8.1f}{ratio}")
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.precisions.split(","), args.steps)
    else:
        main(args.steps, args.rounds, args.precisions, args.backends)
