"""Shared pieces of the benchmarks: synthetic data, the models under test, and timing.

These machines are shared and noisy, so every comparison alternates its contenders in
one process, several rounds, and reports the median of each plus their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import pathlib
import statistics
import time
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from krefinery.config import Config, Refinement  # noqa: E402
from krefinery.core import batchnorm, blocks  # noqa: E402
from krefinery.core.label_refinery import LabelRefinery  # noqa: E402
from krefinery.core.networks import seeded_network  # noqa: E402
from krefinery.core.resnet import build_resnet  # noqa: E402
from krefinery.core.trainer import Trainer, make_optimizer  # noqa: E402
from krefinery.data import pipeline  # noqa: E402
from krefinery.data.pipeline import (  # noqa: E402
    make_augment,
    make_splits,
    onehot_table,
    training_dataset,
)
from krefinery.data.sources import Source  # noqa: E402
from krefinery.runtime.device import (  # noqa: E402
    Runtime,
    apply_determinism,
    cpu_model,
    machine_kind,
    resolve_runtime,
)

SHAPE = (32, 32, 3)
CLASSES = 10
BATCH = 128


def synthetic_images(num: int, seed: int = 0, shape: tuple = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """`num` random uint8 images (32x32x3 unless `shape`) and labels (throughput does not
    depend on content)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (num, *shape), dtype=np.uint8),
        rng.integers(0, CLASSES, num).astype(np.int32),
    )


def batched(data, batch: int) -> tf.data.Dataset:
    """`data` (arrays, or a dict or tuple of them) in batches of `batch`, fed to Keras as runs
    feed it: tf.data's autotuner off (`pipeline.PIPELINE_OPTIONS`). With it on, a timed
    `fit` would return only at the autotuner's next wake-up (2.55 s, 5.11 s, ... after it
    began), and the rate would read that instead of the step's."""
    return tf.data.Dataset.from_tensor_slices(data).batch(batch).with_options(pipeline.PIPELINE_OPTIONS)


def resnet20(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_resnet(SHAPE, CLASSES, depth=20, weight_decay=1e-4)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# The ResNet's batch normalization, Keras's own or the project's fused one (`batch_norm`).
BATCH_NORMS = {"keras": keras.layers.BatchNormalization, "fused": batchnorm.BatchNormalization}


@contextlib.contextmanager
def batch_norm(name: str) -> Iterator[None]:
    """ResNets built meanwhile use BATCH_NORMS[name] (`core.blocks` looks the class up at
    build time); the fused layer again on leaving."""
    blocks.BatchNormalization = BATCH_NORMS[name]
    try:
        yield
    finally:
        blocks.BatchNormalization = batchnorm.BatchNormalization


# tf.data's autotuner in the pipelines runs build: on, TensorFlow's default, or off, as runs
# have it (`tf_data_autotune`).
AUTOTUNE = ("on", "off")


@contextlib.contextmanager
def tf_data_autotune(name: str) -> Iterator[None]:
    """Pipelines built meanwhile have tf.data's autotuner `name` ("off" or "on")
    (`krefinery.data.pipeline` reads PIPELINE_OPTIONS as it builds each one)."""
    previous = pipeline.PIPELINE_OPTIONS
    options = tf.data.Options()
    options.autotune.enabled = name == "on"
    pipeline.PIPELINE_OPTIONS = options
    try:
        yield
    finally:
        pipeline.PIPELINE_OPTIONS = previous


# The project's shared real images (see ../shared/data/README.md).
SHARED_CIFAR = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-1000.tar"


def run_on_shared_images(main: Callable[[int, pathlib.Path], object], doc: str) -> None:
    """The command line of a benchmark of the shared images: `--rounds` and `--tar`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tar", type=pathlib.Path, default=SHARED_CIFAR)
    args = parser.parse_args()
    main(args.rounds, args.tar)


def alternate(contenders: dict[str, Callable[[], float]], rounds: int = 3) -> dict[str, float]:
    """Runs each contender (returning a rate) once per round, interleaved; medians by name."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(rounds):
        for name, measure in contenders.items():
            rates[name].append(measure())
        line = ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items())
        print(f"  round {round_ + 1}/{rounds}: {line}", flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


def rate(run: Callable[[], object], items: int) -> float:
    """Items per second of one call of `run`."""
    start = time.perf_counter()
    run()
    return items / (time.perf_counter() - start)


def machine() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU only"
    return (
        f"machine kind {machine_kind()}: {cpu_model()}, {os.cpu_count()} cores, {device}; "
        f"TF {tf.__version__}, Keras {keras.__version__}"
    )


def run_trainer(
    config: Config, steps_per_epoch: int, shape: tuple = SHAPE, classes: int = CLASSES,
    teacher: bool = False,
) -> tuple[Trainer, Runtime]:
    """A trainer set up as `chain.experiment.prepare_experiment` sets up a run's.

    The config's `precision`, `jit_compile` and `deterministic` resolve as a run's do
    (`auto`/None per machine kind), op determinism is applied before `compile` (Keras
    decides there whether XLA can be used), and the returned `Runtime` holds what was
    really compiled: `jit_compile` is read back from the trainer.
    """
    runtime = resolve_runtime(config.precision, config.jit_compile, config.deterministic)
    apply_determinism(runtime.deterministic)

    def build(seed: int) -> keras.Model:
        return seeded_network(
            config.architecture(2), seed, shape, classes, weight_decay=config.weight_decay,
            precision=runtime.precision,
        )

    trainer = Trainer(build(config.seed), teacher=build(config.seed) if teacher else None)
    trainer.compile(
        make_optimizer(config, steps_per_epoch, runtime.precision), jit_compile=runtime.jit_compile
    )
    return trainer, dataclasses.replace(runtime, jit_compile=bool(trainer.jit_compile))


def describe(runtime: Runtime) -> str:
    return (
        f"{runtime.precision}{' + XLA' if runtime.jit_compile else ''}"
        f"{', deterministic' if runtime.deterministic else ', not deterministic'}"
    )


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Prints a small two-column table under a heading."""
    width = max(len(name) for name, _ in rows)
    print(f"\n## {title}")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def synthetic_source(num_train: int, num_test: int = 1000, seed: int = 0) -> Source:
    """A CIFAR-shaped source generated on the fly, so no copy of it sits in memory.

    Like a TFDS dataset read from disk, the only in-memory copy of the images is the
    pipeline's own cache, which is what the memory benchmark measures.
    """

    def generate(count: int, offset: int) -> tf.data.Dataset:
        def example(i):
            image = tf.random.stateless_uniform(SHAPE, seed=[seed, i], maxval=256, dtype=tf.int32)
            return {"image": tf.cast(image, tf.uint8), "label": tf.cast(i % CLASSES, tf.int64)}

        return tf.data.Dataset.range(offset, offset + count).map(example)

    names = tuple(f"class_{c}" for c in range(CLASSES))
    return Source("synthetic", generate(num_train, 0), generate(num_test, num_train), names, SHAPE)


class Refinery:
    """The pieces `commands.train.train_and_evaluate` wires together, for timing them one by one.

    Precision, XLA and op determinism resolve as a run's do (`auto`/None: per machine
    kind); `runtime` says what was compiled.
    """

    def __init__(
        self,
        source: Source,
        depth: int = 20,
        batch: int = BATCH,
        epochs: int = 1,
        precision: str = "auto",
        jit_compile: bool | None = None,
        deterministic: bool | None = None,
        augment: bool = True,
        online: bool = False,
        val_fraction: float = 0.05,
        generations: int = 1_000_000,
    ):
        config = Config(
            epochs=epochs, batch_size=batch, warmup_epochs=0, depth=depth, weight_decay=1e-4,
            precision=precision, jit_compile=jit_compile, deterministic=deterministic,
        )
        self.splits = make_splits(source, val_fraction, seed=0)
        shape, classes = self.splits.image_shape, self.splits.num_classes
        steps = math.ceil(self.splits.num_train / batch)
        self.trainer, self.runtime = run_trainer(config, steps, shape, classes, teacher=online)

        def build(generation: int, seed: int) -> keras.Model:
            keras.utils.set_random_seed(seed)
            return build_resnet(
                shape, classes, depth=depth, weight_decay=1e-4, precision=self.runtime.precision
            )

        self.labels = onehot_table(self.splits.train, self.splits.num_ids, classes)
        augment_fn = make_augment(shape, self.splits.flip_safe) if augment else None
        self.train_ds = training_dataset(
            self.splits.train, self.labels, batch, 0, augment_fn, self.splits.num_train
        )
        self.refinery = LabelRefinery(
            self.labels, build, Refinement(generations), jit_compile=self.runtime.jit_compile
        )
        self.refinery.set_model(self.trainer)

    def relabel(self) -> None:
        """The relabel pass that ends a generation (online: the teacher takes the weights)."""
        self.refinery.relabeller.hand_on(self.trainer.classifier, self.trainer, self.refinery.refinement)

    def train(self, epochs: int = 1, steps: int | None = None) -> None:
        """One generation: fresh weights, `epochs` of training, then a relabel pass."""
        self.trainer.fit(
            self.train_ds, epochs=epochs, steps_per_epoch=steps, callbacks=[self.refinery], verbose=0
        )
