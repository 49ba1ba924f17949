"""What a per-epoch checkpoint costs: seconds to write one, and its size on disk.

A checkpoint is what `ChainRunner` writes after every epoch: the trainer's weights and
optimizer state (`Trainer.save_weights`, to a temporary file renamed into place), then
a small JSON state. Measured on the digits default model (ResNet-20, 8x8x1, the run's
resolved precision) against one training epoch of that run, and on ResNet-20 at
32x32x3 (CIFAR-sized), offline and online (online adds the frozen teacher's weights).

    python -m bench.checkpoint
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from bench.common import machine
from krefinery.chain_cache import GenerationCache
from krefinery.config import Config
from krefinery.experiment import prepare_experiment
from krefinery.resnet import build_resnet
from krefinery.train import Trainer, make_optimizer

ROUNDS = 10


def checkpoint_cost(trainer: Trainer, rounds: int = ROUNDS) -> tuple[float, int]:
    """Median seconds of one checkpoint, and its bytes (weights file and state)."""
    with tempfile.TemporaryDirectory() as folder:
        cache = GenerationCache(folder)
        times = []
        for epoch in range(1, rounds + 1):
            start = time.perf_counter()
            cache.save_checkpoint("key", trainer, {"epoch": epoch, "logs": {}, "seconds": 0.0})
            times.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in Path(folder).glob("key.ckpt*"))
    return statistics.median(times), size


def cifar_trainer(online: bool) -> Trainer:
    def build() -> tf.keras.Model:
        return build_resnet((32, 32, 3), 10, depth=20)

    trainer = Trainer(build(), teacher=build() if online else None)
    trainer.compile(make_optimizer(Config(epochs=1, warmup_epochs=0), 100))
    images = tf.zeros((8, 32, 32, 3), tf.uint8)
    batch = {"image": images, "label": tf.zeros(8, tf.int32), "target": tf.one_hot(tf.zeros(8, tf.int32), 10)}
    trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)  # Builds the optimizer.
    return trainer


def main() -> None:
    print(f"# Checkpoint cost (median of {ROUNDS}); {machine()}")
    experiment = prepare_experiment(Config(verbose=0))
    trainer = experiment.trainer
    start = time.perf_counter()
    trainer.fit(
        experiment.training_dataset(1), epochs=1, steps_per_epoch=experiment.steps_per_epoch, verbose=0
    )
    epoch = time.perf_counter() - start
    seconds, size = checkpoint_cost(trainer)
    print(
        f"digits default (ResNet-20 8x8x1, {experiment.runtime['precision']}): "
        f"{seconds * 1000:.1f} ms, {size / 1e6:.2f} MB per checkpoint; one epoch "
        f"{epoch:.2f} s (first, with tracing) -> {seconds / epoch:.1%} of it"
    )
    for online in (False, True):
        seconds, size = checkpoint_cost(cifar_trainer(online))
        mode = "online (with teacher)" if online else "offline"
        print(f"ResNet-20 32x32x3, {mode}: {seconds * 1000:.1f} ms, {size / 1e6:.2f} MB per checkpoint")


if __name__ == "__main__":
    main()
