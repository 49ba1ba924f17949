"""Benchmark 3: one offline relabel pass over the training set vs one training epoch on it.

The relabel pass is what `LabelRefinery.refine` runs between generations: inference
batches of 1024, no augmentation, read from the pipeline's cache (no second copy).
Target: relabel time at most 0.2x an epoch's.

    python -m bench.relabel [--images=2560] [--rounds=2]
"""

from __future__ import annotations

import argparse

from bench.common import Refinery, alternate, machine, rate, report, synthetic_source


def main(images: int = 2560, rounds: int = 2) -> float:
    print(f"# Relabel pass vs training epoch: ResNet-20, {images} images; {machine()}")
    run = Refinery(synthetic_source(images), val_fraction=0.05)
    count = run.splits.num_train
    run.trainer.fit(run.train_ds.take(2), verbose=0)  # Compile both outside the timing.
    run.relabel()
    rates = alternate(
        {
            "epoch": lambda: rate(lambda: run.trainer.fit(run.train_ds, verbose=0), count),
            "relabel": lambda: rate(run.relabel, count),
        },
        rounds,
    )
    ratio = rates["epoch"] / rates["relabel"]
    report(
        f"images/s over {count} training images, median of {rounds} rounds",
        [
            ("training epoch", f"{rates['epoch']:7.1f} img/s"),
            ("relabel pass", f"{rates['relabel']:7.1f} img/s"),
            ("relabel time / epoch time", f"{ratio:.3f}x (target <= 0.2x)"),
        ],
    )
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    main(args.images, args.rounds)
