"""Benchmark 1: our training step (`Trainer.fit`) against plain `keras.Model.fit`.

Same ResNet-20, same 32x32x3 batches of 128, same SGD, same precision; the data is
pre-batched in memory so only the step is timed. Target: ratio >= 1.0.

    python -m bench.train_step [--steps=20] [--rounds=3]
"""

from __future__ import annotations

import argparse

import keras
import tensorflow as tf

from bench.common import BATCH, CLASSES, alternate, dtype_policy, machine, rate, report, resnet20, synthetic_images
from krefinery.train import Trainer

SETTINGS = (("float32", False), ("float32", True), ("mixed_bfloat16", True))


def batches(steps: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The same batches twice: as our pipeline's dicts and as (image, one-hot) pairs."""
    images, labels = synthetic_images(steps * BATCH)
    targets = tf.one_hot(labels, CLASSES)
    ours = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "target": targets})
    plain = tf.data.Dataset.from_tensor_slices((images, targets))
    return ours.batch(BATCH).cache(), plain.batch(BATCH).cache()


def compare(precision: str, jit: bool, steps: int, rounds: int) -> dict[str, float]:
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
    return alternate(
        {
            "ours": lambda: rate(lambda: trainer.fit(ours_data, verbose=0), steps * BATCH),
            "fit": lambda: rate(lambda: plain.fit(plain_data, verbose=0), steps * BATCH),
        },
        rounds,
    )


def main(steps: int = 20, rounds: int = 3) -> dict[str, dict[str, float]]:
    print(f"# Train step vs keras.Model.fit: ResNet-20, 32x32x3, batch {BATCH}; {machine()}")
    results = {}
    rows = []
    for precision, jit in SETTINGS:
        name = f"{precision}{' + XLA' if jit else ''}"
        medians = compare(precision, jit, steps, rounds)
        results[name] = medians
        rows.append(
            (
                name,
                f"ours {medians['ours']:6.1f} img/s   fit {medians['fit']:6.1f} img/s   "
                f"ratio {medians['ours'] / medians['fit']:.2f}x",
            )
        )
    report(f"images/s, median of {rounds} alternating rounds of {steps} steps", rows)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.steps, args.rounds)
