"""Benchmarks 1 and 2: our training step against plain `keras.Model.fit` and PyTorch.

Same ResNet-20, same 32x32x3 batches of 128, same SGD with momentum, same precision;
the data is pre-batched in memory so only the step is timed, and the contenders
alternate within each round. PyTorch (bench/torch_resnet.py, a plain loop in float32
or bfloat16 autocast) runs only if installed: `pip install torch==2.13.0`, the CPU
build here. Targets: ours/fit >= 1.0x; our best setting >= PyTorch at its precision.

    python -m bench.train_step [--steps=15] [--rounds=3]
"""

from __future__ import annotations

import argparse
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from bench.common import BATCH, CLASSES, alternate, dtype_policy, machine, rate, report, resnet20, synthetic_images
from krefinery.train import Trainer

# (Keras dtype policy, XLA, the PyTorch precision it compares with)
SETTINGS = (
    ("float32", False, "float32"),
    ("float32", True, "float32"),
    ("mixed_bfloat16", False, "bfloat16"),
    ("mixed_bfloat16", True, "bfloat16"),
)


def batches(steps: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The same batches twice: as our pipeline's dicts and as (image, one-hot) pairs."""
    images, labels = synthetic_images(steps * BATCH)
    targets = tf.one_hot(labels, CLASSES)
    ours = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "target": targets})
    plain = tf.data.Dataset.from_tensor_slices((images, targets))
    return ours.batch(BATCH), plain.batch(BATCH)


def torch_contender(steps: int, precision: str) -> Callable[[], float] | None:
    try:
        from bench.torch_resnet import train_rate
    except ImportError:
        return None
    images, labels = synthetic_images(steps * BATCH)
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    return lambda: train_rate(images, targets, BATCH, steps, precision)


def compare(precision: str, jit: bool, torch_precision: str, steps: int, rounds: int) -> dict[str, float]:
    ours_data, plain_data = batches(steps)
    with dtype_policy(precision):
        trainer = Trainer(resnet20())
        trainer.compile(keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit)
        plain = resnet20()
        plain.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
    for model, data in ((trainer, ours_data), (plain, plain_data)):
        model.fit(data.take(2), verbose=0)  # Trace and compile outside the timing.
    contenders = {
        "ours": lambda: rate(lambda: trainer.fit(ours_data, verbose=0), steps * BATCH),
        "fit": lambda: rate(lambda: plain.fit(plain_data, verbose=0), steps * BATCH),
    }
    torch_run = torch_contender(steps, torch_precision)
    if torch_run is not None:
        contenders["torch"] = torch_run
    return alternate(contenders, rounds)


def main(steps: int = 15, rounds: int = 3, settings: str = "all") -> dict[str, dict[str, float]]:
    print(f"# Train step vs keras.Model.fit vs PyTorch: ResNet-20, 32x32x3, batch {BATCH}; {machine()}")
    results, rows = {}, []
    chosen = SETTINGS if settings == "all" else [SETTINGS[int(i)] for i in settings.split(",")]
    for precision, jit, torch_precision in chosen:
        name = f"{precision}{' + XLA' if jit else ''}"
        medians = compare(precision, jit, torch_precision, steps, rounds)
        print(f"{name}: {medians}", flush=True)
        results[name] = medians
        line = (
            f"ours {medians['ours']:6.1f}   fit {medians['fit']:6.1f}   "
            f"ours/fit {medians['ours'] / medians['fit']:.2f}x"
        )
        if "torch" in medians:
            line += (
                f"   torch ({torch_precision}) {medians['torch']:6.1f}   "
                f"ours/torch {medians['ours'] / medians['torch']:.2f}x"
            )
        rows.append((name, line))
    if not any("torch" in m for m in results.values()):
        rows.append(("PyTorch", "not installed: `pip install torch==2.13.0` to compare"))
    report(f"images/s, median of {rounds} alternating rounds of {steps} steps", rows)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", default="all", help="Indices into SETTINGS, e.g. 0,3.")
    args = parser.parse_args()
    main(args.steps, args.rounds, args.settings)
