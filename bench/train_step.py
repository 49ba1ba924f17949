"""Benchmarks 1 and 2: the training step as runs configure it, in every setting, and PyTorch.

Each setting is a run's trainer (`bench.common.run_trainer`: the project's `Trainer`,
`make_optimizer`, op determinism applied before `compile` as `prepare_experiment` does),
and the XLA column says what Keras really compiled: under op determinism Keras turns
`jit_compile=True` off, so "deterministic + XLA" does not exist. `auto` is what a run
resolves to on this machine. ResNet-20, 32x32x3 batches of 128, pre-batched in memory
so only the step is timed; every contender runs once per round, interleaved, and op
determinism is switched to each TensorFlow contender's own setting before its turn.
PyTorch (bench/torch_resnet.py: the same network, channels-last, float32 or bfloat16
autocast, with its default threads and with one) joins when installed. Optionally plain
`keras.Model.fit` on the same network.

    python -m bench.train_step [--steps=10] [--rounds=3] [--settings=all] [--fit]
"""

from __future__ import annotations

import argparse
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from bench.common import (
    BATCH,
    CLASSES,
    alternate,
    batched,
    describe,
    dtype_policy,
    machine,
    rate,
    report,
    resnet20,
    run_trainer,
    synthetic_images,
)
from krefinery.config import Config
from krefinery.runtime.device import apply_determinism, resolve_runtime

# (--precision, --jit_compile, --deterministic) as a run would be given them.
SETTINGS = {
    "auto": ("auto", None, None),
    "float32": ("float32", False, True),
    "float32 nodet": ("float32", False, False),
    "float32 XLA": ("float32", True, False),
    "bf16": ("mixed_bfloat16", False, True),
    "bf16 nodet": ("mixed_bfloat16", False, False),
    "bf16 XLA": ("mixed_bfloat16", True, False),
}
# PyTorch's OpenMP threads spin while they wait; on a shared, oversubscribed machine its
# default (one per core) can run far slower than one thread, so both are timed.
TORCH = {
    "torch float32": ("float32", None),
    "torch bf16": ("bfloat16", None),
    "torch float32 1 thread": ("float32", 1),
    "torch bf16 1 thread": ("bfloat16", 1),
}


def batches(steps: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The same batches twice: as our pipeline's dicts and as (image, one-hot) pairs."""
    images, labels = synthetic_images(steps * BATCH)
    targets = tf.one_hot(labels, CLASSES)
    return batched({"image": images, "label": labels, "target": targets}, BATCH), batched((images, targets), BATCH)


def torch_contender(steps: int, precision: str, threads: int | None) -> Callable[[], float] | None:
    try:
        from bench.torch_resnet import train_rate
    except ImportError:
        return None
    images, labels = synthetic_images(steps * BATCH)
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    return lambda: train_rate(images, targets, BATCH, steps, precision, threads=threads)


def step_config(precision: str, jit: bool | None, deterministic: bool | None) -> Config:
    """A CIFAR-preset run's optimisation settings (batch 128, SGD, weight decay 1e-4)."""
    return Config(
        depth=20, batch_size=BATCH, epochs=10, lr_schedule="step", warmup_epochs=0,
        weight_decay=1e-4, precision=precision, jit_compile=jit, deterministic=deterministic,
    )


def ours(name: str, steps: int, data: tf.data.Dataset) -> tuple[str, Callable[[], float]]:
    trainer, runtime = run_trainer(step_config(*SETTINGS[name]), steps)
    trainer.fit(data.take(2), verbose=0)  # Trace (and compile) outside the timing.

    def measure() -> float:
        apply_determinism(runtime.deterministic)
        return rate(lambda: trainer.fit(data, shuffle=False, verbose=0), steps * BATCH)

    return describe(runtime), measure


def plain_fit(name: str, steps: int, data: tf.data.Dataset) -> Callable[[], float]:
    """keras.Model.fit on the same network, with the same precision, XLA and determinism."""
    runtime = resolve_runtime(*SETTINGS[name])
    apply_determinism(runtime.deterministic)
    with dtype_policy(runtime.precision):
        model = resnet20()
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=runtime.jit_compile,
        )
    model.fit(data.take(2), verbose=0)

    def measure() -> float:
        apply_determinism(runtime.deterministic)
        return rate(lambda: model.fit(data, shuffle=False, verbose=0), steps * BATCH)

    return measure


def main(steps: int = 10, rounds: int = 3, settings: str = "all", fit: bool = False) -> dict[str, float]:
    print(f"# Train step as runs configure it, and PyTorch: ResNet-20, 32x32x3, batch {BATCH}; {machine()}")
    names = list(SETTINGS) if settings == "all" else settings.split(",")
    ours_data, plain_data = batches(steps)
    contenders, labels = {}, {}
    for name in names:
        labels[name], contenders[name] = ours(name, steps, ours_data)
        if fit:
            contenders[f"{name} fit"] = plain_fit(name, steps, plain_data)
    for name, (precision, threads) in TORCH.items():
        run = torch_contender(steps, precision, threads)
        if run is not None:
            contenders[name] = run
    medians = alternate(contenders, rounds)
    best_torch = max((medians[n] for n in TORCH if n in medians), default=None)
    rows = []
    for name, value in medians.items():
        line = f"{value:7.1f} img/s"
        if name in labels:
            line += f"   compiled as: {labels[name]}"
        if best_torch:
            line += f"   / best PyTorch {value / best_torch:.2f}x"
        rows.append((name, line))
    if best_torch is None:
        rows.append(("PyTorch", "not installed: `pip install torch` to compare"))
    report(f"images/s, median of {rounds} alternating rounds of {steps} steps", rows)
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", default="all", help=f"Comma-separated: {', '.join(SETTINGS)}.")
    parser.add_argument("--fit", action="store_true", help="Also time plain keras.Model.fit.")
    args = parser.parse_args()
    main(args.steps, args.rounds, args.settings, args.fit)
