"""What every generation of every chain shares in one process: data, pipelines, trainers."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from krefinery import distribute
from krefinery.config import Architecture, Config
from krefinery.device import apply_determinism, resolve_runtime
from krefinery.label_refinery import LabelRefinery
from krefinery.pipeline import (
    Splits,
    TFLabelTable,
    eval_dataset,
    make_augment,
    load_splits,
    onehot_table,
    steps_per_epoch,
    training_dataset,
)
from krefinery.resnet import seeded_resnet
from krefinery.train import Trainer, make_optimizer

# A trainer's shape: its classifier's architecture and its teacher slot's (None: no teacher).
TrainerShape = tuple[Architecture, Architecture | None]


@dataclasses.dataclass
class Experiment:
    """Built once per process; a tuning search runs many chains on one `Experiment`, so
    data is loaded, split and cached once, and the trainers' compiled steps are reused.

    One trainer fits every generation, unless the refinery (generation 1) has an
    architecture of its own: then generation 1 has a trainer of its shape, and the
    students another; online, generation 2's teacher slot has the refinery's shape and
    generation 3's the students' (see `trainer_shape`).

    `runtime` is what the run resolved to here, as `results.json` records it:
    `precision` (the Keras dtype policy), `jit_compile` (whether Keras really compiled
    with XLA: it turns XLA off under op determinism), `deterministic`, `distribute`
    (the strategy: none, mirrored, multi_worker or data_parallel) and `replicas`.
    """

    config: Config
    splits: Splits
    labels: TFLabelTable
    augment: Callable | None
    val_ds: tf.data.Dataset
    test_ds: tf.data.Dataset
    trainers: dict[TrainerShape, Trainer]
    build_classifier: Callable[[int, int], keras.Model]
    runtime: dict[str, Any]
    steps_per_epoch: int
    replication: distribute.Replication = distribute.ONE_DEVICE

    def trainer_for(self, generation: int) -> Trainer:
        """The trainer that fits generation `generation`."""
        return self.trainers[trainer_shape(self.config, generation)]

    @property
    def trainer(self) -> Trainer:
        """Generation 1's trainer: every generation's, unless the refinery has an
        architecture of its own."""
        return self.trainer_for(1)

    def load(self, weights: str | os.PathLike, generation: int) -> Trainer:
        """The trainer of generation `generation`, its classifier holding `weights` (a
        stored generation's), ready to evaluate or export."""
        trainer = self.trainer_for(generation)
        trainer.classifier.load_weights(weights)
        return trainer

    def training_dataset(self, generation: int, initial_epoch: int = 0) -> tf.data.Dataset:
        """Generation `generation`'s batches from epoch `initial_epoch` on (0-based)."""
        config, splits = self.config, self.splits
        return training_dataset(
            splits.train,
            self.labels,
            config.batch_size,
            config.seed,
            self.augment,
            splits.num_train,
            generation=generation,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            multiple_of=self.replication.batch_multiple,
        )

    def eval_dataset(self, examples: tf.data.Dataset) -> tf.data.Dataset:
        """`examples` (of known size) in un-augmented batches for `trainer.evaluate`, of a
        size the devices can evaluate (see `distribute.Replication.evaluation_batch`)."""
        size = self.replication.evaluation_batch(int(examples.cardinality()))
        return eval_dataset(examples, size)

    def reset_labels(self) -> None:
        """Ground truth back into the label table, for a chain's generation 1."""
        self.labels.reset()

    def refinery(
        self,
        generations: int,
        temperature: float,
        alpha: float,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    ) -> LabelRefinery:
        refinery = LabelRefinery(
            self.labels,
            self.build_classifier,
            generations,
            temperature=temperature,
            alpha=alpha,
            seed=self.config.seed,
            jit_compile=self.runtime["jit_compile"],
            on_relabel=on_relabel,
            trainer_of=self.trainer_for,
        )
        refinery.set_model(self.trainer)
        return refinery


def trainer_shape(config: Config, generation: int) -> TrainerShape:
    """The shape of the trainer that fits `generation`: its own architecture and, online,
    a teacher slot of the previous generation's. Generation 1 has no teacher; it shares
    the students' trainer (and so its slot) where it has their architecture, as the
    one trainer of a chain with no refinery of its own."""
    classifier = config.architecture(generation)
    if config.relabel != "online":
        return classifier, None
    if generation > 1:
        return classifier, config.architecture(generation - 1)
    return classifier, classifier if classifier == config.architecture(2) else None


def prepare_experiment(config: Config) -> Experiment:
    """Loads and splits the data and builds the pipelines and the trainers; trains nothing.

    The trainer, its optimizer and its classifier are built under the `--distribute`
    strategy's scope (`distribute.resolve`). The label table is not: it is a host
    variable that the tf.data pipeline reads and relabelling writes, outside any replica.
    Bad input (dataset, folder, devices) raises `UserError` here, before anything is written.
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    replication = distribute.resolve(config.distribute, config.batch_size)
    replication.check_batch_size(config.batch_size)
    runtime = resolve_runtime(config.precision, config.jit_compile, config.deterministic)
    apply_determinism(runtime.deterministic)
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config)
    precision = runtime.precision

    def build(architecture: Architecture, seed: int) -> keras.Model:
        return seeded_resnet(
            architecture,
            seed,
            splits.image_shape,
            splits.num_classes,
            weight_decay=config.weight_decay,
            precision=precision,
            synchronized_batch_norm=replication.synchronized_batch_norm,
        )

    def build_classifier(generation: int, seed: int) -> keras.Model:
        return build(config.architecture(generation), seed)

    def make_trainer(shape: TrainerShape) -> Trainer:
        """The one place a trainer is built: every shape a chain needs goes through it."""
        classifier, teacher = shape
        trainer = Trainer(
            build(classifier, config.seed),
            teacher=None if teacher is None else build(teacher, config.seed),
            temperature=config.temperature,
            alpha=config.alpha,
        )
        trainer.compile(
            make_optimizer(config, steps, precision),
            jit_compile=runtime.jit_compile,
        )
        # Built now, so that checkpoints can be loaded into it before the first step.
        trainer(tf.zeros((1, *splits.image_shape), tf.uint8))
        return trainer

    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    augment = make_augment(splits.image_shape, splits.flip_safe) if config.augment else None
    steps = steps_per_epoch(splits.num_train, config.batch_size, replication.batch_multiple)
    # Generations 1, 2 and 3 have every shape there is (3 and on are alike): built
    # whatever the chain's length, as a search runs chains of many lengths.
    shapes = dict.fromkeys(trainer_shape(config, generation) for generation in (1, 2, 3))
    with replication.scope():
        trainers = {shape: make_trainer(shape) for shape in shapes}
    first = trainers[trainer_shape(config, 1)]
    return Experiment(
        config=config,
        splits=splits,
        labels=labels,
        augment=augment,
        val_ds=eval_dataset(splits.val, replication.evaluation_batch(splits.num_val)),
        test_ds=eval_dataset(splits.test, replication.evaluation_batch(splits.num_test)),
        trainers=trainers,
        build_classifier=build_classifier,
        runtime={
            "precision": precision,
            # Keras's own reading: XLA is off under op determinism, whatever was asked.
            "jit_compile": bool(first.jit_compile),
            "deterministic": runtime.deterministic,
            **replication.runtime(),
        },
        steps_per_epoch=steps,
        replication=replication,
    )
