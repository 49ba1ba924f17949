"""What every generation of every chain shares in one process: data, trainers, relabelling."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import keras
import numpy as np

from krefinery.chain import refinery_model
from krefinery.config import LOADED, Architecture, Config
from krefinery.core.networks import check_input_shape, seeded_network
from krefinery.core.refinement import Relabeller, generation_seed
from krefinery.core.trainer import Trainer, make_optimizer
from krefinery.data.feed import DataInfo, Feed
from krefinery.data.memory import MemoryFeed, MemorySplits
from krefinery.data.sources import Source, load_source
from krefinery.data.splits import num_train
from krefinery.errors import UserError
from krefinery.runtime import distribute, probe
from krefinery.runtime.device import (
    BF16_KINDS,
    Runtime,
    apply_determinism,
    machine_kind,
    resolve_input,
    resolve_runtime,
)
from krefinery.runtime.hosts import ALONE, Hosts

# A trainer's shape: its classifier's architecture and its teacher slot's (None: no teacher).
TrainerShape = tuple[Architecture, Architecture | None]


@dataclasses.dataclass
class Experiment:
    """Built once per process; a tuning search runs many chains on one `Experiment`, so
    data is loaded, split and cached once, and the trainers' compiled steps are reused.

    One trainer fits every generation, unless the refinery (generation 1) has an
    architecture of its own: then generation 1 has a trainer of its shape, and the
    students another; online, generation 2's teacher slot has the refinery's shape and
    generation 3's the students' (see `trainer_shape`). Stored generations are read
    into `readers`, models of each architecture that are never trained, so evaluating
    or exporting one never touches a trainer in use.

    `runtime` is what the run resolved to here, as `results.json` records it: the Keras
    `backend`, `precision` (the Keras dtype policy), `jit_compile` (whether Keras really compiled
    with XLA: it turns XLA off under op determinism), `deterministic`, `distribute`
    (the strategy: none, mirrored, multi_worker or data_parallel), `replicas` and `input`
    (tfdata or memory).
    """

    config: Config
    feed: Feed
    trainers: dict[TrainerShape, Trainer]
    readers: dict[Architecture, Trainer]
    relabeller: Relabeller
    build_classifier: Callable[[int, int], keras.Model]
    runtime: dict[str, Any]
    replication: distribute.Replication = distribute.ONE_DEVICE
    # `--precision=auto` measured here (`runtime.probe`): images a second per candidate
    # precision. Recorded in results.json's runtime, but not in store keys: the
    # precision it chose is.
    precision_measured: dict[str, float] | None = None

    @property
    def info(self) -> DataInfo:
        return self.feed.info

    @property
    def steps_per_epoch(self) -> int:
        return self.feed.steps_per_epoch

    @property
    def validation(self) -> Any:
        return self.feed.validation

    @property
    def test(self) -> Any:
        return self.feed.test

    @property
    def training_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """The training examples' ids and ground truth (`Feed.truth`)."""
        return self.feed.truth()

    def trainer_for(self, generation: int) -> Trainer:
        """The trainer that fits generation `generation`."""
        return self.trainers[trainer_shape(self.config, generation)]

    def fresh_classifier(self, generation: int) -> keras.Model:
        """Generation `generation`'s initial weights, drawn from (seed, generation) alone."""
        return self.build_classifier(generation, generation_seed(self.config.seed, generation))

    def training_batches(self, generation: int, initial_epoch: int = 0) -> Any:
        """Generation `generation`'s batches from epoch `initial_epoch` on (0-based): of
        each, this process's share (`Replication.shares`)."""
        return self.replication.shares(self.feed.training(generation, initial_epoch))

    def exportable(self, weights: str | os.PathLike, generation: int) -> keras.Model:
        """A classifier of generation `generation`'s architecture holding `weights`, to
        export. Across processes, a model of its own, built where it is called: within
        `Replication.here`, since process 0 exports alone."""
        if not self.replication.hosts.several:
            return self.stored(weights, generation).classifier
        classifier = self.fresh_classifier(generation)
        classifier.load_weights(weights)
        return classifier

    def stored(self, weights: str | os.PathLike, generation: int) -> Trainer:
        """The reader of generation `generation`'s architecture, holding `weights` (a
        stored generation's), ready to evaluate or export."""
        reader = self.readers[self.config.architecture(generation)]
        reader.classifier.load_weights(weights)
        return reader


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


def prepare_experiment(config: Config, feed: Feed | None = None, hosts: Hosts = ALONE) -> Experiment:
    """Loads and splits the data and builds the feed and the trainers; trains nothing.

    `feed`: data already at hand (`chain.runner.train_chain`'s arrays); None loads
    `config.dataset` onto the `--input` path. The trainer, its optimizer and its
    classifier are built under the `--distribute` strategy's scope
    (`distribute.resolve`). The label table is not: the tf.data pipeline reads it on the
    host, outside any replica. Bad input (dataset, folder, devices) raises `UserError`
    here, before anything is written.
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    replication = distribute.resolve(config.distribute, config.batch_size, hosts)
    replication.check_batch_size(config.batch_size)
    runtime = resolve_runtime(config.precision, config.jit_compile, config.deterministic)
    if feed is None:
        feed = load_feed(config, replication)
    apply_determinism(runtime.deterministic)
    info = feed.info
    measured = None
    if config.precision == "auto" and probe.enabled() and replication.replicas == 1 and machine_kind() in BF16_KINDS:
        choice = measure_precision(config, feed, runtime)
        runtime = dataclasses.replace(runtime, precision=choice.precision)
        measured = choice.images_per_second
        if config.verbose:
            print(choice.line(probe.cache_path()), flush=True)
    keras.utils.set_random_seed(config.seed)
    precision = runtime.precision

    def build(architecture: Architecture, seed: int) -> keras.Model:
        if architecture.arch == LOADED:
            return refinery_model.load(config.refinery_model, info.image_shape, info.num_classes)
        return seeded_network(
            architecture,
            seed,
            info.image_shape,
            info.num_classes,
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
        )
        trainer.compile(
            make_optimizer(config, feed.steps_per_epoch, precision),
            jit_compile=runtime.jit_compile,
        )
        # Built now, so that checkpoints can be loaded into it before the first step.
        trainer(keras.ops.zeros((1, *info.image_shape), "uint8"))
        return trainer

    def make_reader(architecture: Architecture) -> Trainer:
        """A model that only ever holds stored generations: evaluated, exported, teaching."""
        reader = Trainer(build(architecture, config.seed))
        reader.compile(jit_compile=runtime.jit_compile)
        reader(keras.ops.zeros((1, *info.image_shape), "uint8"))
        return reader

    # Generations 1, 2 and 3 have every shape there is (3 and on are alike): built
    # whatever the chain's length, as a search runs chains of many lengths.
    shapes = dict.fromkeys(trainer_shape(config, generation) for generation in (1, 2, 3))
    architectures = dict.fromkeys(config.architecture(generation) for generation in (1, 2))
    with replication.scope():
        trainers = {shape: make_trainer(shape) for shape in shapes}
        readers = {architecture: make_reader(architecture) for architecture in architectures}
    first = trainers[trainer_shape(config, 1)]
    return Experiment(
        config=config,
        feed=feed,
        trainers=trainers,
        readers=readers,
        # XLA for relabelling if asked for and Keras compiles the training step with it
        # (it does not under TensorFlow's op determinism, for one).
        relabeller=Relabeller(feed.labels, jit_compile=bool(first.jit_compile), verbose=config.verbose),
        build_classifier=build_classifier,
        runtime={
            "backend": keras.backend.backend(),
            "precision": precision,
            # Keras's own reading: XLA is off under op determinism, whatever was asked.
            "jit_compile": bool(first.jit_compile),
            "deterministic": runtime.deterministic,
            **replication.runtime(),
            "input": "memory" if isinstance(feed, MemoryFeed) else "stream" if getattr(feed.info, "decode", None) else "tfdata",
        },
        replication=replication,
        precision_measured=measured,
    )


def measure_precision(config: Config, feed: Feed, runtime: Runtime) -> probe.Choice:
    """`probe.choose_precision` on generation 1's model and the run's batch: a trainer of
    each candidate precision, stepped on one batch of random images."""
    info = feed.info
    # The first network the run trains: a refinery read from a file is never trained.
    architecture = config.architecture(1 if config.refinery_model is None else 2)
    model = {
        "backend": keras.backend.backend(),
        "architecture": architecture.to_dict(),
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "batch_size": config.batch_size,
        "jit_compile": runtime.jit_compile,
        "deterministic": runtime.deterministic,
    }
    rng = np.random.default_rng(0)
    labels = rng.integers(0, info.num_classes, config.batch_size)
    batch = {
        "image": rng.integers(0, 256, (config.batch_size, *info.image_shape)).astype(np.uint8),
        "label": labels.astype(np.int32),
        "target": np.eye(info.num_classes, dtype=np.float32)[labels],
    }

    def make_step(precision: str) -> Callable[[], None]:
        classifier = seeded_network(
            architecture, config.seed, info.image_shape, info.num_classes,
            weight_decay=config.weight_decay, precision=precision,
        )
        trainer = Trainer(classifier)
        trainer.compile(make_optimizer(config, feed.steps_per_epoch, precision), jit_compile=runtime.jit_compile)
        return lambda: trainer.train_on_batch(batch)

    return probe.choose_precision(model, probe.CANDIDATES, make_step, config.batch_size)


def check_data(config: Config) -> None:
    """`config.dataset` read and split as a run would, and let go: bad data, or a batch
    larger than the training split, is a `UserError` before anything is made."""
    source = load_source(
        config.dataset, config.data_dir, config.svhn_extra, config.skip_bad_images, config.image_hw,
        config.verbose, stream=config.input == "stream",
    )
    check_networks(config, source)
    config.check_batch_size(num_train(source, config.val_fraction, config.resolved_split_seed))


def check_networks(config: Config, source: Source) -> None:
    """The chain's networks take the source's images and classes, and a refinery file
    loads and fits them: else a `UserError`."""
    for architecture in dict.fromkeys(config.architecture(generation) for generation in (1, 2)):
        if architecture.arch == LOADED:
            refinery_model.load(config.refinery_model, source.image_shape, len(source.class_names))
        else:
            check_input_shape(architecture, source.image_shape, len(source.class_names))


def load_feed(config: Config, replication: distribute.Replication) -> Feed:
    """`config.dataset` loaded, split and checked, on the `--input` path this machine
    resolves it to."""
    source = load_source(
        config.dataset, config.data_dir, config.svhn_extra, config.skip_bad_images, config.image_hw,
        config.verbose, stream=config.input == "stream",
    )
    check_networks(config, source)
    if config.flip is not None:
        source = dataclasses.replace(source, flip_safe=config.flip)
    train_bytes = getattr(source.train, "images", np.zeros(0, np.uint8)).nbytes
    path = resolve_input(config.input, train_bytes)
    options = dict(
        augment=config.augment,
        multiple_of=replication.batch_multiple,
        evaluation_batch=replication.evaluation_batch,
    )
    if path == "memory":
        if replication.name in ("mirrored", "multi_worker"):
            raise UserError(
                f"--input=memory makes batches on one device; --distribute={replication.name} "
                "needs tf.data: pass --input=tfdata (or, on JAX, --distribute=data_parallel)."
            )
        splits = MemorySplits.of(source, config.val_fraction, config.resolved_split_seed)
        config.check_batch_size(splits.info.num_train)
        return MemoryFeed.of(splits, config.batch_size, config.seed, crop=config.crop_spec, **options)
    from krefinery.data.pipeline import (  # tf.data: TensorFlow's.
        TFDataFeed,
        make_splits,
    )

    splits = make_splits(source, config.val_fraction, config.resolved_split_seed)
    config.check_batch_size(splits.num_train)
    return TFDataFeed(splits, config.batch_size, config.seed, config.epochs, crop=config.crop_spec, **options)
