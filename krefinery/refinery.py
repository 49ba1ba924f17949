"""The refinery: generations of fresh classifiers, each trained on the last one's softmax.

`LabelRefinery` is the refinery step (relabel, then start afresh); `train_and_evaluate`
is the whole run: data in, one `fit` per generation, `results.json` out.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from krefinery import charts, reporting, summaries
from krefinery.config import Config
from krefinery.datasets import load_source
from krefinery.device import resolve_jit_compile, resolve_precision
from krefinery.export import export_generation, prepare_export_dir
from krefinery.pipeline import (
    eval_dataset,
    make_augment,
    Splits,
    make_splits,
    onehot_table,
    training_dataset,
)
from krefinery.relabel import RefinedLabels, refine_table
from krefinery.resnet import build_resnet
from krefinery.train import Trainer, make_optimizer


def generation_seed(seed: int, generation: int) -> int:
    """The weight-initialisation seed of a generation, derived from the run seed."""
    return int(np.random.SeedSequence([seed, generation]).generate_state(1)[0])


class LabelRefinery(keras.callbacks.Callback):
    """Makes each `fit` of a `Trainer` one Label Refinery generation.

    - `on_train_begin`: generation k starts from scratch: the classifier's weights are
      replaced by those of `build_classifier(generation_seed(seed, k))` and the optimizer's
      state (momenta, iteration count, hence the learning-rate schedule) by a fresh one's.
    - `on_train_end`, if generations remain: the trained classifier, in inference mode,
      refines the labels. Offline (the trainer has no teacher): `softmax(logits / T)`
      of every example in `examples` is written into the `labels` table by example id,
      which the training pipeline reads. Online: the trained weights are copied into
      the trainer's frozen teacher, which labels each augmented batch from then on.
      Then `on_relabel(k, previous, refined)`, if given, sees the `[num_ids, classes]`
      targets of `examples` before and after (online: the teacher's, un-augmented).

    Example:

        refinery = LabelRefinery(labels, eval_dataset(splits.train), build, generations=3)
        for _ in range(3):
            trainer.fit(train_ds, epochs=30, callbacks=[refinery])
    """

    def __init__(
        self,
        labels: tf.Variable,
        examples: tf.data.Dataset,
        build_classifier: Callable[[int], keras.Model],
        generations: int,
        temperature: float = 1.0,
        alpha: float = 0.0,
        seed: int = 0,
        jit_compile: bool = False,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    ):
        super().__init__()
        self.labels = labels
        self.examples = examples
        self.build_classifier = build_classifier
        self.generations = generations
        self.temperature = temperature
        self.alpha = alpha
        self.seed = seed
        self.on_relabel = on_relabel
        self.generation = 0
        # The targets the last relabel produced, as (generation, table): the next relabel's
        # "previous" labels, so online mode need not run the old teacher over the data again.
        self._last_refined: tuple[int, np.ndarray] | None = None
        self.jit_compile = jit_compile
        # One compiled labelling function per model labelled (the classifier, the teacher).
        self._labellers: dict[int, RefinedLabels] = {}

    def on_train_begin(self, logs=None):
        if self.generation == self.generations:
            raise RuntimeError(f"all {self.generations} generations have been trained already.")
        self.generation += 1
        self.start_fresh()

    def on_train_end(self, logs=None):
        if self.generation < self.generations:
            self.refine()

    def start_fresh(self) -> None:
        """New weights and a new optimizer state, in place, so compiled steps stay valid."""
        trainer = self.model
        fresh = self.build_classifier(generation_seed(self.seed, self.generation))
        trainer.classifier.set_weights(fresh.get_weights())
        trainer.reset_optimizer()

    def refine(self) -> None:
        """Refined labels from the classifier just trained, for the next generation."""
        trainer = self.model
        previous = None
        if self.on_relabel is not None:
            last = self._last_refined
            fresh = last is not None and last[0] == self.generation - 1
            previous = last[1] if fresh else self.labels_in_use()
        if trainer.teacher is not None:
            trainer.use_teacher(trainer.classifier)
        else:
            refine_table(self._labeller(trainer.classifier), self.examples, self.labels)
        if self.on_relabel is not None:
            refined = self.labels_in_use()
            self._last_refined = (self.generation, refined)
            self.on_relabel(self.generation, previous, refined)

    def labels_in_use(self) -> np.ndarray:
        """The targets of `examples` that training reads now, as a `[num_ids, classes]` array.

        Online, these are the teacher's labels of the un-augmented images (training
        itself labels augmented ones); before the teacher is ready, the table's.
        """
        table = self.labels.numpy()
        trainer = self.model
        if trainer.teacher is not None and trainer.teaching:
            self._labeller(trainer.teacher).table(self.examples, into=table)
        return table

    def _labeller(self, model: keras.Model) -> RefinedLabels:
        """XLA if asked for and Keras compiles the training step with it (it does not with
        TensorFlow's op determinism on, for one)."""
        if id(model) not in self._labellers:
            jit_compile = self.jit_compile and self.model.jit_compile
            self._labellers[id(model)] = RefinedLabels(
                model, self.temperature, self.alpha, jit_compile
            )
        return self._labellers[id(model)]


@dataclasses.dataclass
class Experiment:
    """What every generation of a chain shares, built once per process.

    A tuning search runs many chains on one `Experiment`, so data is loaded, split and
    cached once, and the trainer's compiled steps are reused across trials.
    """

    config: Config
    splits: Splits
    labels: tf.Variable
    augment: Callable | None
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    test_ds: tf.data.Dataset
    trainer: Trainer
    build_classifier: Callable[[int], keras.Model]
    precision: str
    jit_compile: bool

    def refinery(
        self,
        generations: int,
        temperature: float,
        alpha: float,
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    ) -> LabelRefinery:
        return LabelRefinery(
            self.labels,
            eval_dataset(self.splits.train),
            self.build_classifier,
            generations,
            temperature=temperature,
            alpha=alpha,
            seed=self.config.seed,
            jit_compile=self.jit_compile,
            on_relabel=on_relabel,
        )


def prepare_experiment(config: Config) -> Experiment:
    """Loads and splits the data and builds the pipelines and the trainer; trains nothing.

    Bad input (dataset, folder) raises `UserError` here, before anything is written.
    """
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    source = load_source(config.dataset, config.data_dir, config.svhn_extra)
    splits = make_splits(source, config.val_fraction, config.seed)
    precision = resolve_precision(config.precision)
    jit_compile = resolve_jit_compile(config.jit_compile)

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
        )

    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    augment = make_augment(splits.image_shape, splits.flip_safe) if config.augment else None
    train_ds = training_dataset(
        splits.train, labels, config.batch_size, config.seed, augment, splits.num_train
    )
    online = config.relabel == "online"
    trainer = Trainer(
        build_classifier(config.seed),
        teacher=build_classifier(config.seed) if online else None,
        temperature=config.temperature,
        alpha=config.alpha,
    )
    steps_per_epoch = math.ceil(splits.num_train / config.batch_size)
    trainer.compile(make_optimizer(config, steps_per_epoch, precision), jit_compile=jit_compile)
    return Experiment(
        config=config,
        splits=splits,
        labels=labels,
        augment=augment,
        train_ds=train_ds,
        val_ds=eval_dataset(splits.val),
        test_ds=eval_dataset(splits.test),
        trainer=trainer,
        build_classifier=build_classifier,
        precision=precision,
        jit_compile=jit_compile,
    )


def run_generation(
    experiment: Experiment,
    refinery: LabelRefinery,
    callbacks: list[keras.callbacks.Callback],
    train_ds: tf.data.Dataset | None = None,
) -> dict[str, Any]:
    """Trains the refinery's next generation; returns its validation and label figures."""
    config = experiment.config
    start = time.perf_counter()
    history = experiment.trainer.fit(
        experiment.train_ds if train_ds is None else train_ds,
        epochs=config.epochs,
        validation_data=experiment.val_ds,
        shuffle=False,  # The pipeline shuffles, seeded.
        callbacks=[refinery, *callbacks],
        verbose=config.verbose,
    )
    last = {name: values[-1] for name, values in history.history.items()}
    return {
        "generation": refinery.generation,
        "val_accuracy": float(last["val_accuracy"]),
        "train_accuracy": float(last["accuracy"]),
        "train_label_agreement": float(last["label_agreement"]),
        "train_label_entropy": float(last["label_entropy"]),
        "seconds": round(time.perf_counter() - start, 2),
    }


def train_and_evaluate(config: Config) -> dict[str, Any]:
    """Runs the refinery chain that `config` describes; returns (and saves) the results.

    Every bad input (dataset, folder, flags, export folder) is reported before the work
    directory is made and before any training starts.
    """
    experiment = prepare_experiment(config)
    prepare_export_dir(config)
    workdir = reporting.create_workdir(config)
    splits, trainer = experiment.splits, experiment.trainer
    tensorboard = workdir / "tensorboard"
    relabel_summaries = summaries.RelabelSummaries(
        tensorboard / "refinery", eval_dataset(splits.train), splits.class_names
    )
    generation_summaries = summaries.GenerationSummaries(tensorboard / "generations")
    refinery = experiment.refinery(
        config.generations, config.temperature, config.alpha, on_relabel=relabel_summaries
    )
    exports: dict[str, str] = {}
    generations = []
    for generation in range(1, config.generations + 1):
        if config.verbose:
            print(f"Generation {generation}/{config.generations}", flush=True)
        start = time.perf_counter()
        record = run_generation(
            experiment, refinery, [reporting.tensorboard_callback(workdir, generation)]
        )
        test = trainer.evaluate(experiment.test_ds, verbose=0, return_dict=True)
        weights = workdir / f"gen_{generation}.weights.h5"
        trainer.classifier.save_weights(weights)
        generations.append(
            {
                "generation": generation,
                "val_accuracy": record["val_accuracy"],
                "test_accuracy": float(test["accuracy"]),
                "train_accuracy": record["train_accuracy"],
                "train_label_agreement": record["train_label_agreement"],
                "train_label_entropy": record["train_label_entropy"],
                "seconds": round(time.perf_counter() - start, 2),
                "weights": weights.name,
            }
        )
        generation_summaries.write(generations[-1])
        if config.export_all_generations:
            path = export_generation(
                trainer.classifier, splits.class_names, splits.image_shape, config, generation
            )
            exports[f"gen_{generation}"] = os.fspath(path)
        # Written after every generation, so a crash loses at most the one in flight.
        finished = generation == config.generations
        results = reporting.results_record(config, splits, generations, workdir, finished)
        results["runtime"] = {"precision": experiment.precision, "jit_compile": experiment.jit_compile}
        results["exports"] = exports
        reporting.write_results(workdir, results)
        charts.accuracy_chart(generations, results["best_generation"], workdir / charts.ACCURACY_CHART)
    relabel_summaries.close()
    generation_summaries.close()
    best = experiment.build_classifier(config.seed)
    best.load_weights(workdir / f"gen_{results['best_generation']}.weights.h5")
    path = export_generation(best, splits.class_names, splits.image_shape, config)
    exports["best"] = os.fspath(path)
    reporting.write_results(workdir, results)
    return results
