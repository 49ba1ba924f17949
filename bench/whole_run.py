"""Whole runs, two ways of one part alternating: where users feel a change.

Times what `python run.py` does from its call to its end (data loading, every epoch's
validation and checkpoint, the relabel pass, test evaluation, reports and the SavedModel
export), in this process, each run in a fresh work directory (nothing comes from a
store), the two contenders alternating within each round. `--compare` picks them:

- `batchnorm`: the ResNet built with Keras's `BatchNormalization` or with the project's
  fused one (`krefinery.core.batchnorm`; bench.fused_batchnorm times the step alone);
- `autotune`: the run's tf.data pipelines with tf.data's autotuner off (as runs have it,
  `krefinery.data.pipeline._prefetched`) or on (TensorFlow's default).

Two jobs:

- `digits`: the default job, `python run.py` (3 generations of 15 epochs, ResNet-20,
  batch 64, 1,437 training images of 8x8);
- `cifar`: a CIFAR-sized chain, 2 generations of 1 epoch (so one relabel pass) on real
  32x32 CIFAR-10 JPEGs from ../shared/data (500 a class, 5,000 in all: 4,500 train, the
  rest validation and test), ResNet-20, batch 128.

    python -m bench.whole_run [--compare=batchnorm|autotune] [--jobs=digits,cifar] [--rounds=2]
        [--digits_epochs=15] [--precision=P]

Reports each run's wall seconds and its generations' training seconds (results.json's
`seconds`), medians by contender, and their ratio (the first contender's over the second's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import run
from bench.common import (
    AUTOTUNE,
    BATCH_NORMS,
    SHARED_CIFAR,
    batch_norm,
    machine,
    tf_data_autotune,
)

# What --compare sets against what: (the contenders, baseline first; the setting for one).
COMPARISONS = {"batchnorm": (tuple(BATCH_NORMS), batch_norm), "autotune": (AUTOTUNE, tf_data_autotune)}


def cifar_folder(root: Path, per_class: int = 500) -> Path:
    """The first `per_class` JPEGs (by name) of each class of the shared CIFAR-10 archive, unpacked
    under `root` in the `folder:` layout."""
    if not SHARED_CIFAR.is_file():
        raise SystemExit(f"error: {SHARED_CIFAR} is missing: the cifar job reads ../shared/data.")
    names = subprocess.run(["tar", "-tf", SHARED_CIFAR], check=True, capture_output=True, text=True).stdout.split()
    by_class: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.endswith(".jpg"):
            by_class.setdefault(Path(name).parent.name, []).append(name)
    keep = [name for files in by_class.values() for name in files[:per_class]]
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", SHARED_CIFAR, "-C", root, *keep], check=True)
    return root


def one_run(flags: list[str], setting: contextlib.AbstractContextManager, workdir: Path) -> dict:
    """`python run.py FLAGS` in this process, inside `setting` (one contender's)."""
    run.FLAGS.unparse_flags()
    start = time.perf_counter()
    with setting:
        run.main(run.parse_flags(["run.py", *flags, f"--workdir={workdir}", f"--export_dir={workdir / 'models'}"]))
    seconds = time.perf_counter() - start
    results = json.loads((workdir / "results.json").read_text())
    return {
        "wall": round(seconds, 1),
        "generations": [g["seconds"] for g in results["generations"]],
        "test_accuracy": [g["test_accuracy"] for g in results["generations"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="batchnorm")
    parser.add_argument("--jobs", default="digits,cifar")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--digits_epochs", type=int, default=15, help="the default job's epochs")
    parser.add_argument("--precision", help="run.py's --precision for every run (default: auto)")
    args = parser.parse_args(argv)
    contenders, setting = COMPARISONS[args.compare]
    first, second = contenders
    print(f"# Whole runs, {args.compare}: {first} vs {second}; {machine()}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="whole-run-"))
    jobs = {}
    if "digits" in args.jobs:
        jobs["digits"] = [f"--epochs={args.digits_epochs}", "--verbose=0"]
    if "cifar" in args.jobs:
        data = cifar_folder(scratch / "cifar")
        jobs["cifar"] = [
            f"--dataset=folder:{data}", "--generations=2", "--epochs=1", "--batch_size=128", "--verbose=0",
        ]
    if args.precision:
        jobs = {job: [*flags, f"--precision={args.precision}"] for job, flags in jobs.items()}
    summary = {}
    for job, flags in jobs.items():
        runs = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always pays for a cold process.
            order = contenders if round_ % 2 == 0 else contenders[::-1]
            for name in order:
                record = one_run(flags, setting(name), scratch / f"{job}-{name}-{round_}")
                runs[name].append(record)
                print(f"  {job} round {round_ + 1} {name}: {json.dumps(record)}", flush=True)
        walls = {name: statistics.median(r["wall"] for r in records) for name, records in runs.items()}
        training = {
            name: statistics.median(sum(r["generations"]) for r in records) for name, records in runs.items()
        }
        summary[job] = {"wall": walls, "training": training}
        print(
            f"{job}: wall median {first} {walls[first]:.1f} s, {second} {walls[second]:.1f} s "
            f"({first} / {second} {walls[first] / walls[second]:.2f}x); training seconds median "
            f"{first} {training[first]:.1f}, {second} {training[second]:.1f} "
            f"({training[first] / training[second]:.2f}x)",
            flush=True,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
