"""What every generation of every chain shares in one process: data, pipelines, trainer."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from krefinery import distribute
from krefinery.config import Config
from krefinery.device import apply_determinism, resolve_runtime
from krefinery.label_refinery import LabelRefinery
from krefinery.pipeline import (
    Splits,
    eval_dataset,
    make_augment,
    load_splits,
    onehot_table,
    onehot_values,
    steps_per_epoch,
    training_dataset,
)
from krefinery.resnet import build_resnet
from krefinery.train import Trainer, make_optimizer


@dataclasses.dataclass
class Experiment:
    """Built once per process; a tuning search runs many chains on one `Experiment`, so
    data is loaded, split and cached once, and the trainer's compiled steps are reused.

    `runtime` is what the run resolved to here, as `results.json` records it:
    `precision` (the Keras dtype policy), `jit_compile` (whether Keras really compiled
    with XLA: it turns XLA off under op determinism), `deterministic`, `distribute`
    (the strategy: none, mirrored, multi_worker or data_parallel) and `replicas`.
    """

    config: Config
    splits: Splits
    labels: tf.Variable
    augment: Callable | None
    val_ds: tf.data.Dataset
    test_ds: tf.data.Dataset
    trainer: Trainer
    build_classifier: Callable[[int], keras.Model]
    runtime: dict[str, Any]
    steps_per_epoch: int
    replication: distribute.Replication = distribute.ONE_DEVICE

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
        splits = self.splits
        self.labels.assign(onehot_values(splits.train, splits.num_ids, splits.num_classes))

    def refinery(
        self,
        generations: int,
        temperature: float,
        alpha: float,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    ) -> LabelRefinery:
        refinery = LabelRefinery(
            self.labels,
            eval_dataset(self.splits.train),
            self.build_classifier,
            generations,
            temperature=temperature,
            alpha=alpha,
            seed=self.config.seed,
            jit_compile=self.runtime["jit_compile"],
            on_relabel=on_relabel,
        )
        refinery.set_model(self.trainer)
        return refinery


def prepare_experiment(config: Config) -> Experiment:
    """Loads and splits the data and builds the pipelines and the trainer; trains nothing.

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

    def build_classifier(seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        return build_resnet(
            splits.image_shape,
            splits.num_classes,
            depth=config.depth,
            width=config.width,
            version=config.resnet_version,
            weight_decay=config.weight_decay,
            precision=precision,
            synchronized_batch_norm=replication.synchronized_batch_norm,
        )

    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    augment = make_augment(splits.image_shape, splits.flip_safe) if config.augment else None
    online = config.relabel == "online"
    steps = steps_per_epoch(splits.num_train, config.batch_size, replication.batch_multiple)
    with replication.scope():
        trainer = Trainer(
            build_classifier(config.seed),
            teacher=build_classifier(config.seed) if online else None,
            temperature=config.temperature,
            alpha=config.alpha,
        )
        trainer.compile(
            make_optimizer(config, steps, precision),
            jit_compile=runtime.jit_compile,
        )
        # Built now, so that checkpoints can be loaded into it before the first step.
        trainer(tf.zeros((1, *splits.image_shape), tf.uint8))
    return Experiment(
        config=config,
        splits=splits,
        labels=labels,
        augment=augment,
        val_ds=eval_dataset(splits.val, replication.evaluation_batch(splits.num_val)),
        test_ds=eval_dataset(splits.test, replication.evaluation_batch(splits.num_test)),
        trainer=trainer,
        build_classifier=build_classifier,
        runtime={
            "precision": precision,
            # Keras's own reading: XLA is off under op determinism, whatever was asked.
            "jit_compile": bool(trainer.jit_compile),
            "deterministic": runtime.deterministic,
            **replication.runtime(),
        },
        steps_per_epoch=steps,
        replication=replication,
    )
