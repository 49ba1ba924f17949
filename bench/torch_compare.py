"""Benchmark 2: our training step against a plain PyTorch loop, at the same precision.

The same ResNet-20 (bench/torch_resnet.py mirrors krefinery's), batch 128, 32x32x3,
SGD with momentum, soft-target cross-entropy, on the CPU. Needs `pip install
torch==2.13.0` (the CPU build here); skipped with a message otherwise. Target: our
best setting at or above PyTorch at the same precision.

    python -m bench.torch_compare [--steps=20] [--rounds=3]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import BATCH, CLASSES, alternate, machine, report, synthetic_images
from bench.train_step import compare


def main(steps: int = 20, rounds: int = 3) -> dict[str, float] | None:
    try:
        import torch

        from bench.torch_resnet import train_rate
    except ImportError:
        print("\n## PyTorch comparison skipped: `pip install torch==2.13.0` to run it.")
        return None
    print(f"# Ours vs PyTorch {torch.__version__}: ResNet-20, batch {BATCH}; {machine()}")
    images, labels = synthetic_images(steps * BATCH)
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    results = {}
    for precision, keras_setting in (("float32", ("float32", False)), ("bfloat16", ("mixed_bfloat16", True))):
        torch_rate = alternate(
            {"torch": lambda p=precision: train_rate(images, targets, BATCH, steps, p)}, rounds
        )["torch"]
        ours = compare(*keras_setting, steps, rounds)["ours"]
        results[precision] = {"ours": ours, "torch": torch_rate}
    report(
        f"images/s, median of {rounds} rounds of {steps} steps",
        [
            (
                name,
                f"ours {r['ours']:6.1f}   torch {r['torch']:6.1f}   ratio {r['ours'] / r['torch']:.2f}x",
            )
            for name, r in results.items()
        ],
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.steps, args.rounds)
