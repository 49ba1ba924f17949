"""Benchmark 7: time per epoch at 1x, 2x and 4x the data, and per generation.

An epoch should cost time linear in the data, and every generation the same (each
starts from fresh weights on the same pipeline; only the labels change).

    python -m bench.scaling [--images=1280]
"""

from __future__ import annotations

import argparse
import time

from bench.common import Refinery, machine, report, synthetic_source


def seconds(run: Refinery, epochs: int = 1) -> float:
    start = time.perf_counter()
    run.trainer.fit(run.train_ds, epochs=epochs, verbose=0)
    return time.perf_counter() - start


def main(images: int = 1280) -> dict:
    print(f"# Scaling: ResNet-20, batch 128; {machine()}")
    rows, per_epoch = [], {}
    for factor in (1, 2, 4):
        run = Refinery(synthetic_source(images * factor), val_fraction=0.05)
        run.trainer.fit(run.train_ds.take(2), verbose=0)
        per_epoch[factor] = seconds(run)
        rows.append(
            (
                f"epoch at {factor}x ({run.splits.num_train} images)",
                f"{per_epoch[factor]:6.1f} s   {per_epoch[factor] / per_epoch[1]:.2f}x of 1x",
            )
        )
    run = Refinery(synthetic_source(images), val_fraction=0.05, generations=3)
    run.trainer.fit(run.train_ds.take(2), verbose=0)
    run.relabel()
    generations = []
    for _ in range(3):
        start = time.perf_counter()
        run.train(epochs=2)
        generations.append(time.perf_counter() - start)
    for k, value in enumerate(generations, start=1):
        rows.append((f"generation {k} (2 epochs + relabel)", f"{value:6.1f} s   {value / generations[0]:.2f}x of gen 1"))
    report("wall seconds", rows)
    return {"per_epoch": per_epoch, "generations": generations}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280)
    args = parser.parse_args()
    main(args.images)
