"""The CPU study of bench/STUDY.md: repeated chains over a grid of refinery settings.

`python run.py --repeats=N --control` answers one question for one setting. Over a grid
(offline and online, T in {1, 2, 4}, alpha in {0, 0.3}) that would train generation 1
again for every setting, which these 2 cores cannot afford. This driver trains the same
chains on `chains.ChainRunner` with a `GenerationStore`: generation 1 of a repeat once
for all settings, each generation 2 once. Reuse is exact (the cache's promise, tested in
tests/test_tuning.py): each chain equals the one `run.py --seed=s --split_seed=s0` trains.

- Online chains share the offline chain's generation 1: it trains on the ground truth in
  both modes (the online trainer's teacher is idle until generation 2), so it is stored
  under the online key once instead of being trained twice.
- The control is generation 2 of the chain at alpha = 1, where the refined labels are
  the one-hot ground truth: generation 2's seed and batches, ground-truth labels, which
  is exactly what `--control` trains (the same store key: tests/test_study.py).

One process per (repeat, phase), so an interrupted study keeps every finished chain:

    python -m bench.study --dataset=folder:/tmp/c2k --repeat=0 --phase=core --out=/tmp/study
    python -m bench.study --report --out=/tmp/study       # tables from every line so far

Each finished chain appends its generations to `<out>/chains.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHASES = {
    # The comparisons that matter most come first, for every repeat.
    "core": [("offline", 1.0, 0.0), ("control", 1.0, 1.0), ("online", 1.0, 0.0)],
    # One factor at a time around (T=1, alpha=0): what 2 shared cores allowed.
    "grid": [
        (mode, t, a) for mode in ("offline", "online") for t, a in ((2.0, 0.0), (4.0, 0.0), (1.0, 0.3))
    ],
    # The rest of the full T x alpha grid.
    "interactions": [
        (mode, t, a) for mode in ("offline", "online") for t, a in ((2.0, 0.3), (4.0, 0.3))
    ],
}


def base_config(args: argparse.Namespace, repeat: int, relabel: str):
    from krefinery.config import Config

    return Config(
        dataset=args.dataset,
        generations=2,
        relabel=relabel,
        depth=args.depth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_epochs=1,
        seed=args.seed + repeat,
        split_seed=args.seed,
        verbose=0,
    )


def run(args: argparse.Namespace) -> None:
    from krefinery.chain.experiment import prepare_experiment
    from krefinery.chain.runner import ChainRunner
    from krefinery.chain.store import GenerationStore
    from krefinery.config import Refinement

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runners: dict[str, ChainRunner] = {}

    def runner_for(relabel: str) -> ChainRunner:
        if relabel not in runners:
            config = base_config(args, args.repeat, relabel)
            runners[relabel] = ChainRunner(
                prepare_experiment(config), GenerationStore(out / f"cache_{relabel}")
            )
        return runners[relabel]

    def evaluate(runner: ChainRunner, record: dict, dataset) -> float:
        model = runner.stored(record["key"], record["generation"])
        return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])

    for mode, temperature, alpha in PHASES[args.phase]:
        relabel = "online" if mode == "online" else "offline"
        runner = runner_for(relabel)
        config = runner.experiment.config
        if relabel == "online":
            share_generation_one(runner_for("offline"), runner)
        start = time.perf_counter()
        records = runner.run(Refinement(2, temperature, alpha))
        experiment = runner.experiment
        for record in records:
            entry = {
                "repeat": args.repeat,
                "seed": config.seed,
                "mode": mode,
                "temperature": temperature,
                "alpha": alpha,
                "generation": record["generation"],
                "val_accuracy": record["val_accuracy"],
                "test_accuracy": evaluate(runner, record, experiment.test),
                "train_label_agreement": record["train_label_agreement"],
                "trained": record["trained"],
                "epochs": config.epochs,
                "depth": config.depth,
                "dataset": config.dataset,
                "num_train": experiment.info.num_train,
            }
            if record["generation"] == 1:
                entry["train_accuracy_unaugmented"] = evaluate(
                    runner, record, experiment.feed.train_unaugmented()
                )
            with open(out / "chains.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        print(
            f"repeat {args.repeat} {mode} T={temperature:g} alpha={alpha:g}: "
            + ", ".join(f"gen {r['generation']} val {r['val_accuracy']:.4f}" for r in records)
            + f" ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


def share_generation_one(offline, online) -> None:
    """Stores the offline chain's generation 1 as the online chain's (see the docstring)."""
    from krefinery.config import Refinement

    source = offline.keys(Refinement(1))[0]
    target = online.keys(Refinement(1))[0]
    if online.store.lookup(target) is not None:
        return
    record = offline.store.lookup(source)
    if record is None:
        offline.run(Refinement(1))
        record = offline.store.lookup(source)
    classifier = online.experiment.stored(offline.store.weights_path(source), 1).classifier
    online.store.store(target, classifier, {**record, "shared_from": source})


def report(out: Path) -> str:
    """Markdown tables of every chain in `<out>/chains.jsonl`, paired by repeat."""
    from krefinery.analysis import stats

    lines = [json.loads(line) for line in (out / "chains.jsonl").read_text().splitlines() if line]
    by_setting: dict[tuple, dict[int, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for entry in lines:
        setting = (entry["mode"], entry["temperature"], entry["alpha"])
        by_setting[setting][entry["repeat"]][entry["generation"]] = entry
    first = {
        r: gens[1] for r, gens in by_setting[("offline", 1.0, 0.0)].items() if 1 in gens
    }
    control = {r: gens[2] for r, gens in by_setting.get(("control", 1.0, 1.0), {}).items() if 2 in gens}
    rows = []
    header = (
        "| setting | repeats | gen 1 test | gen 2 test | gen 2 - gen 1 (95% CI) | verdict "
        "| gen 2 - control (95% CI) | verdict | labels wrong | gen 2 val - gen 1 val | verdict |"
    )
    rows.append(header)
    rows.append("|" + "---|" * 11)

    def cell(comparison) -> tuple[str, str]:
        d = comparison.difference
        interval = "" if d.low is None else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        return f"{100 * d.mean:+.2f}{interval}", comparison.verdict

    order = sorted(by_setting, key=lambda s: (s[0] == "control", s[0], s[2], s[1]))
    for setting in order:
        mode, temperature, alpha = setting
        chains = {r: gens for r, gens in by_setting[setting].items() if 2 in gens and r in first}
        if not chains:
            continue
        repeats = sorted(chains)
        g1 = [first[r]["test_accuracy"] for r in repeats]
        g2 = [chains[r][2]["test_accuracy"] for r in repeats]
        gain, gain_verdict = cell(stats.compare(g2, g1))
        val_gain, val_verdict = cell(
            stats.compare([chains[r][2]["val_accuracy"] for r in repeats], [first[r]["val_accuracy"] for r in repeats])
        )
        paired = [r for r in repeats if r in control]
        if mode != "control" and paired:
            twin, twin_verdict = cell(
                stats.compare(
                    [chains[r][2]["test_accuracy"] for r in paired],
                    [control[r]["test_accuracy"] for r in paired],
                )
            )
        else:
            twin, twin_verdict = "-", "-"
        wrong = stats.summarize([1 - chains[r][2]["train_label_agreement"] for r in repeats])
        name = "control (T=1, alpha=1)" if mode == "control" else f"{mode} T={temperature:g} alpha={alpha:g}"
        rows.append(
            f"| {name} | {len(repeats)} | {_ms(g1)} | {_ms(g2)} | {gain} | {gain_verdict} | {twin} "
            f"| {twin_verdict} | {100 * wrong.mean:.1f}% | {val_gain} | {val_verdict} |"
        )
    fits = [first[r]["train_accuracy_unaugmented"] for r in sorted(first)]
    rows.append("")
    rows.append(
        f"Generation 1 fits {_ms(fits)}% of its own un-augmented training images "
        f"(repeats {sorted(first)}); 'labels wrong' is the share of generation 2's training "
        "labels whose argmax is not the ground truth (online: of the augmented crops it saw "
        "in its last epoch)."
    )
    return "\n".join(rows)


def _ms(values: list[float]) -> str:
    from krefinery.analysis import stats

    s = stats.summarize(values)
    return f"{100 * s.mean:.2f}" + ("" if s.sd is None else f" ± {100 * s.sd:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", action="store_true", help="print the tables and exit")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--phase", choices=sorted(PHASES), default="core")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.out)))
        return
    run(args)


if __name__ == "__main__":
    main()
