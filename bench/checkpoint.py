"""What a per-epoch checkpoint costs: seconds to write one, and its size on disk.

A checkpoint is what `ChainRunner` writes after every epoch: the arrays of the trainer's
weights and optimizer state (`chains.training_state`) as an `.npz`, to a temporary file
renamed into place, then a small JSON state. Keras's own `save_weights` of the same
trainer is timed alongside, alternating, for comparison. Measured on the digits
default model (ResNet-20, 8x8x1, the run's resolved precision) against one training
epoch of that run, and on ResNet-20 at 32x32x3 (CIFAR-sized), offline and online
(online adds the frozen teacher's weights).

    python -m bench.checkpoint
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from bench.common import machine
from krefinery.chain.experiment import prepare_experiment
from krefinery.chain.store import GenerationStore
from krefinery.config import Config
from krefinery.core.resnet import build_resnet
from krefinery.core.trainer import Trainer, make_optimizer

ROUNDS = 10


def checkpoint_cost(trainer: Trainer, rounds: int = ROUNDS) -> tuple[float, int, float]:
    """Median seconds of one checkpoint, its bytes (arrays and state), and the median
    seconds of Keras's `save_weights` of the same trainer, timed alternately."""
    with tempfile.TemporaryDirectory() as folder:
        store = GenerationStore(folder)
        ours, keras_times = [], []
        for epoch in range(1, rounds + 1):
            start = time.perf_counter()
            arrays = [keras.ops.convert_to_numpy(v) for v in trainer.training_state()]
            store.save_checkpoint("key", arrays, {"epoch": epoch, "logs": {}, "seconds": 0.0})
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            trainer.save_weights(Path(folder) / "keras.weights.h5")
            keras_times.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in Path(folder).glob("key.ckpt*"))
    return statistics.median(ours), size, statistics.median(keras_times)


def cifar_trainer(online: bool) -> Trainer:
    def build() -> keras.Model:
        return build_resnet((32, 32, 3), 10, depth=20)

    trainer = Trainer(build(), teacher=build() if online else None)
    trainer.compile(make_optimizer(Config(epochs=1, warmup_epochs=0), 100))
    images = tf.zeros((8, 32, 32, 3), tf.uint8)
    labels = tf.zeros(8, tf.int32)
    batch = {"image": images, "label": labels, "target": tf.one_hot(labels, 10)}
    trainer(images)
    trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)  # Builds the optimizer.
    return trainer


def main() -> None:
    print(f"# Checkpoint cost (median of {ROUNDS}); {machine()}")
    experiment = prepare_experiment(Config(verbose=0))
    trainer = experiment.trainer_for(1)
    steps = experiment.steps_per_epoch
    trainer.fit(experiment.training_batches(1, 0), epochs=1, steps_per_epoch=steps, verbose=0)
    # A second epoch, without tracing: what a checkpoint is weighed against.
    start = time.perf_counter()
    trainer.fit(
        experiment.training_batches(1, 1), epochs=2, initial_epoch=1,
        steps_per_epoch=steps, verbose=0,
    )
    epoch = time.perf_counter() - start
    seconds, size, keras_seconds = checkpoint_cost(trainer)
    print(
        f"digits default (ResNet-20 8x8x1, {experiment.runtime['precision']}): "
        f"{seconds * 1000:.1f} ms, {size / 1e6:.2f} MB per checkpoint (Keras save_weights: "
        f"{keras_seconds * 1000:.1f} ms); one epoch {epoch:.2f} s -> {seconds / epoch:.1%} of it"
    )
    for online in (False, True):
        seconds, size, keras_seconds = checkpoint_cost(cifar_trainer(online))
        mode = "online (with teacher)" if online else "offline"
        print(
            f"ResNet-20 32x32x3, {mode}: {seconds * 1000:.1f} ms, {size / 1e6:.2f} MB per "
            f"checkpoint (Keras save_weights: {keras_seconds * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()
