"""Benchmark 5: the input pipeline alone vs the model's training throughput.

Steady state: the cached split -> shuffle -> augment (pad-crop, flip) -> batch -> join
labels by id -> prefetch, as every epoch after the first reads it. First pass: decoding
real CIFAR-10 JPEGs from ../shared/data through `--dataset=folder:`, which happens once
per run. Target: the pipeline at least 10x the model, so training never waits on data.

    python -m bench.input_pipeline [--images=5120]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import tempfile

from bench.common import BATCH, Refinery, alternate, machine, rate, report, synthetic_source

CIFAR_TAR = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-1000.tar"


def drain(dataset) -> None:
    for _ in dataset:
        pass


def jpeg_first_pass(limit: int) -> tuple[float, int] | None:
    """Images/s of loading and decoding a folder of real JPEGs into the cached splits."""
    if not CIFAR_TAR.exists():
        return None
    from krefinery.datasets import load_source
    from krefinery.pipeline import make_splits, onehot_table

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["tar", "-xf", str(CIFAR_TAR), "-C", folder], check=True)
        count = sum(1 for _ in pathlib.Path(folder).glob("train/*/*.jpg"))

        def load() -> None:
            splits = make_splits(load_source(f"folder:{folder}", None, False), 0.1, seed=0)
            onehot_table(splits.train, splits.num_ids, splits.num_classes)
            drain(splits.val.batch(1024))
            drain(splits.test.batch(1024))

        return rate(load, count), count


def main(images: int = 5120, rounds: int = 3) -> float:
    print(f"# Input pipeline vs model: 32x32x3, batch {BATCH}; {machine()}")
    run = Refinery(synthetic_source(images), val_fraction=0.05)
    count = run.splits.num_train
    drain(run.train_ds)  # Fill the cache; later epochs read it as training does.
    run.trainer.fit(run.train_ds.take(2), verbose=0)
    steps = 10
    rates = alternate(
        {
            "pipeline": lambda: rate(lambda: drain(run.train_ds), count),
            "model": lambda: rate(
                lambda: run.trainer.fit(run.train_ds.take(steps), verbose=0), steps * BATCH
            ),
        },
        rounds,
    )
    rows = [
        ("pipeline, steady state", f"{rates['pipeline']:8.1f} img/s"),
        ("model training step", f"{rates['model']:8.1f} img/s"),
        ("pipeline / model", f"{rates['pipeline'] / rates['model']:.1f}x (target >= 10x)"),
    ]
    first = jpeg_first_pass(images)
    if first:
        rows.append((f"first pass, decoding {first[1]} JPEGs", f"{first[0]:8.1f} img/s"))
        rows.append(("first pass / model", f"{first[0] / rates['model']:.1f}x"))
    report(f"median of {rounds} alternating rounds over {count} images", rows)
    return rates["pipeline"] / rates["model"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.images, args.rounds)
