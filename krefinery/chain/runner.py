"""The one generation loop: a chain over the store of trained generations.

A normal run is a chain whose store lives in its work directory; a tuning trial is a
chain over the search's store. Either way `ChainRunner.run` loads every generation
the store holds, continues a generation in flight from its last checkpoint, and trains
the rest, one `fit` per generation with a checkpoint after every epoch.

Reuse and resumption are exact, not approximate: each generation's initial weights are
seeded by (seed, k), ops are deterministic, each epoch's batches are drawn by stateless
ops from (seed, k, epoch) (`pipeline.training_dataset`), and a checkpoint holds the
trainer's weights and optimizer state (momenta, iteration count, loss scale; online,
the teacher). The labels a generation trains on are remade from its stored parent, a
pure function of it. So a chain continued from the store, or after a kill, equals the
chain trained in one go.

A generation whose loss or weights stop being finite is stopped at once and stored as
diverged (`"diverged": true` and the 1-based `epoch`): it never becomes a teacher, and
the chain ends there.

What the store gives back is checked (`GenerationStore.lookup`, `.checkpoint`). A
stored generation that fails a check is trained again, and a checkpoint that fails is
dropped and its generation restarted from its first epoch, each with one warning line
naming the file: by the exactness above, the chain is the same as if nothing had been
damaged, never one resumed from a wrong figure or weight.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

from krefinery import faults, stops
from krefinery.analysis import underfit
from krefinery.chain.experiment import Experiment, prepare_experiment
from krefinery.chain.store import GenerationStore, chain_keys
from krefinery.config import Config, Refinement
from krefinery.core.trainer import Trainer
from krefinery.data.memory import InMemoryData, MemoryFeed
from krefinery.errors import Damaged, Diverged, Interrupted

Record = dict[str, Any]
# Sees each relabel a run observes: (generation, the labels it trained on, those it hands on).
RelabelObserver = Callable[[int, np.ndarray, np.ndarray], None]


class ChainRunner:
    """Runs chains on one `Experiment`, loading every generation the store already holds.

    The one owner of a chain's state: which labels the trainers hold, and where each
    generation starts from. Each generation is driven by explicit calls, in order:
    its labels (`Relabeller.ground_truth`, or its parent's, handed on), its start
    (`Trainer.start_afresh`, or `Trainer.restore` from the checkpoint), `fit`, then
    the labels it hands on to the next generation; the callbacks of `fit` only watch
    (divergence, checkpoints, summaries) and change nothing.

    A generation's record (`<key>.json` in the store, and what `run` returns, with
    `key` and `trained` added): `generation`, `temperature` and `alpha` (None for
    generation 1), `epochs`, `val_accuracy`, `train_accuracy`, `train_label_agreement`,
    `train_label_entropy` (all from the last epoch), `seconds` (training time, summed
    over resumed attempts), and, with `label_figures` and if it relabelled for a next
    generation, the under-fit figures of its refined labels (`underfit.label_figures`);
    or, if it diverged, `generation`, `temperature`, `alpha`, `epochs`, `diverged:
    true`, `epoch` and `seconds`.
    """

    def __init__(
        self,
        experiment: Experiment,
        store: GenerationStore,
        worker: str = "run",
        on_relabel: RelabelObserver | None = None,
        label_figures: bool = False,
    ):
        self.experiment = experiment
        self.store = store
        self.worker = worker
        self.on_relabel = on_relabel
        # Whether each relabel's under-fit figures go into its generation's record (a run's
        # outputs report them; a search need not pay for reading online labels back).
        self.label_figures = label_figures
        # The key of the generation whose labels the trainers hold now, if any (a child's
        # key hashes its parent's with the temperature and alpha: it names its labels).
        self._labels_for: str | None = None
        # (key, labels): the last labels handed on that were observed, and the key of the
        # generation they are for: the "previous" labels of that generation's own relabel,
        # so online mode need not run its teacher over the data again.
        self._last_refined: tuple[str, np.ndarray] | None = None

    def keys(self, refinement: Refinement) -> list[str]:
        return chain_keys(self.experiment.config, self.experiment.runtime, refinement)

    def run(
        self,
        refinement: Refinement,
        callbacks: Callable[[int], Sequence[keras.callbacks.Callback]] | None = None,
        on_generation: Callable[[Record], None] | None = None,
    ) -> list[Record]:
        """The records of the chain's generations, up to the first diverged one.

        Trains only what the store lacks. `callbacks(k)` gives extra callbacks for
        generation k's `fit` (TensorBoard, say); `on_generation(record)` sees each
        generation, stored or trained, as soon as it is in the store. A generation
        being trained by another process is waited for, not trained twice.
        """
        keys = self.keys(refinement)
        records = []
        for generation, key in enumerate(keys, start=1):
            try:
                stops.check()
                record = self._lookup(generation, key)
                trained = False
                if record is None:
                    with self.store.lock(key):
                        record = self._lookup(generation, key, repair=True)
                        if record is None:
                            self._give_labels(generation, keys, refinement)
                            extra = list(callbacks(generation)) if callbacks else []
                            record = self._train(generation, keys, refinement, extra)
                            trained = True
                            faults.reached(f"gen{generation}.stored")
            except Interrupted as stop:
                if self._lookup(generation, key) is None:
                    raise stop.locate(f"before generation {generation}", f"resumes at generation {generation}")
                raise self._after(stop, generation, len(keys))
            try:
                record = {**record, "generation": generation, "key": key, "trained": trained}
                records.append(record)
                if on_generation is not None:
                    on_generation(record)
                if record.get("diverged"):
                    break
                faults.reached(f"gen{generation}.relabelled")
            except Interrupted as stop:
                raise self._after(stop, generation, len(keys))
        return records

    @staticmethod
    def _after(stop: Interrupted, generation: int, generations: int) -> Interrupted:
        """A stop that hit once `generation` was stored."""
        following = f"resumes at generation {generation + 1}" if generation < generations else "goes on from there"
        return stop.locate(f"after generation {generation}", following)

    def _lookup(self, generation: int, key: str, repair: bool = False) -> Record | None:
        """`generation`'s stored record, or None: not trained, or damaged. With `repair`
        (under its lock), a damaged entry is said in one line and removed, to be trained
        again."""
        try:
            return self.store.lookup(key)
        except Damaged as damaged:
            if repair:
                warn(f"stored generation {generation} is damaged: {damaged}; training it again.")
                self.store.discard(key)
            return None

    def _resume_point(self, generation: int, key: str) -> tuple[dict[str, Any] | None, list[np.ndarray] | None]:
        """The checkpoint `generation` goes on from, or (None, None) to start afresh; a
        damaged one is said in one line and dropped (only the last is kept, so the
        generation restarts from its first epoch)."""
        try:
            return self.store.checkpoint(key) or (None, None)
        except Damaged as damaged:
            warn(
                f"the checkpoint of generation {generation} is damaged: {damaged}; "
                f"generation {generation} restarts from its first epoch."
            )
            self.store.drop_checkpoint(key)
            return None, None

    def stored(self, key: str, generation: int) -> Trainer:
        """A model of `generation`'s architecture holding the stored generation `key`,
        for evaluation and export; never a trainer in use."""
        return self.experiment.stored(self.store.weights_path(key), generation)

    def _give_labels(self, generation: int, keys: list[str], refinement: Refinement) -> None:
        """Puts the labels `generation` trains on where its trainer reads them."""
        experiment = self.experiment
        trainer = experiment.trainer_for(generation)
        if self._labels_for == keys[generation - 1]:
            return  # Handed on as the parent finished training.
        if generation == 1:
            experiment.relabeller.ground_truth(trainer)
        else:
            # No observation: the labels before these are not at hand, and this relabel
            # was observed when the parent was first trained.
            teacher = self.stored(keys[generation - 2], generation - 1).classifier
            experiment.relabeller.hand_on(teacher, trainer, refinement)
        self._labels_for = keys[generation - 1]

    def _train(
        self,
        generation: int,
        keys: list[str],
        refinement: Refinement,
        extra: list[keras.callbacks.Callback],
    ) -> Record:
        """Trains `generation` (from its checkpoint, if any), hands its labels on if the
        chain goes on, stores it, and returns its record."""
        experiment, config = self.experiment, self.experiment.config
        key = keys[generation - 1]
        if generation == 1 and config.refinery_model is not None:
            return self._adopt(keys, refinement)
        trainer = experiment.trainer_for(generation)
        state, arrays = self._resume_point(generation, key)
        with experiment.replication.scope():  # Optimizer variables are made here.
            if state is None:
                trainer.start_afresh(experiment.fresh_classifier(generation))
            else:
                trainer.restore(arrays)
        initial_epoch = state["epoch"] if state else 0
        checkpoint = EpochCheckpoint(self.store, key, state)
        guard = DivergenceGuard(generation)
        points = [FaultPoints(generation)] if faults.active() else []
        record: Record = {
            "generation": generation,
            "temperature": refinement.temperature if generation > 1 else None,
            "alpha": refinement.alpha if generation > 1 else None,
            "epochs": config.epochs,
        }
        self._labels_for = None  # Known again once this generation hands its labels on.
        if config.verbose:
            resumed = f", resumed after epoch {initial_epoch}" if initial_epoch else ""
            print(f"Generation {generation}/{refinement.generations}{resumed}", flush=True)
        with self._stops_located(generation, key, guard, initial_epoch):
            try:
                trainer.fit(
                    experiment.training_batches(generation, initial_epoch),
                    epochs=config.epochs,
                    initial_epoch=initial_epoch,
                    steps_per_epoch=experiment.steps_per_epoch,
                    validation_data=experiment.validation,
                    shuffle=False,  # The batches are shuffled, seeded.
                    # The guard before the checkpoint: a diverged epoch is never saved.
                    callbacks=[guard, checkpoint, StopCheck(), *points, *extra],
                    verbose=config.verbose,
                )
            except Diverged as diverged:
                record.update(diverged=True, epoch=diverged.epoch, seconds=checkpoint.elapsed())
                if generation > 1 and not self._labels_finite(trainer):
                    record["labels_not_finite"] = True
                self.store.store(key, None, record)
                return record
            figures = {}
            if generation < refinement.generations:
                figures = self._hand_on(generation, keys, refinement)
            logs = checkpoint.logs
            record.update(
                val_accuracy=logs["val_accuracy"],
                train_accuracy=logs["accuracy"],
                train_label_agreement=logs["label_agreement"],
                train_label_entropy=logs["label_entropy"],
                history=checkpoint.history,
                seconds=checkpoint.elapsed(),
                **figures,
            )
            self.store.store(key, trainer.classifier, record)
            self.store.log_training(
                {
                    "key": key,
                    "generation": generation,
                    "temperature": record["temperature"],
                    "alpha": record["alpha"],
                    "epochs": config.epochs - initial_epoch,
                    "worker": self.worker,
                }
            )
            return record

    def _adopt(self, keys: list[str], refinement: Refinement) -> Record:
        """Generation 1 read from `--refinery_model` instead of trained: evaluated on the
        validation split, its labels handed on, and stored like a trained generation
        (`loaded: true`, `epochs: 0`, no training figures)."""
        experiment, config = self.experiment, self.experiment.config
        start = time.perf_counter()
        trainer = experiment.trainer_for(1)
        with experiment.replication.scope():
            trainer.start_afresh(experiment.fresh_classifier(1))
        if config.verbose:
            print(f"Generation 1/{refinement.generations}: read from --refinery_model={config.refinery_model}, not trained", flush=True)
        validation = trainer.evaluate(experiment.validation, verbose=0, return_dict=True)
        self._labels_for = None
        figures = self._hand_on(1, keys, refinement) if refinement.generations > 1 else {}
        record: Record = {
            "generation": 1,
            "temperature": None,
            "alpha": None,
            "epochs": 0,
            "loaded": True,
            "val_accuracy": float(validation["accuracy"]),
            "seconds": time.perf_counter() - start,
            **figures,
        }
        self.store.store(keys[0], trainer.classifier, record)
        return record

    @contextlib.contextmanager
    def _stops_located(self, generation: int, key: str, guard: DivergenceGuard, initial_epoch: int) -> Iterator[None]:
        """Says where a stop hit the generation in training: the epoch in flight, which
        is abandoned (the same command redoes it from the last checkpoint, already on
        disk: each one lands by rename), and the last epoch kept."""
        try:
            yield
        except Interrupted as stop:
            if self._lookup(generation, key) is not None:
                raise  # Stored already: `run` says so.
            try:
                saved, _ = self.store.checkpoint(key) or (None, None)
            except Damaged:
                saved = None
            done = saved["epoch"] if saved else 0
            epoch = min(max(guard.epoch, initial_epoch + 1), self.experiment.config.epochs)
            resume = f"resumes from the end of epoch {done}" if done else f"starts generation {generation} again"
            raise stop.locate(f"in generation {generation}, epoch {epoch}", resume)

    def _check_labels_alike(self, student: Trainer) -> None:
        """Of several processes, each labelled every training image itself: their label
        tables must be the same, or their shares of each batch would train on labels
        from different models."""
        hosts = self.experiment.replication.hosts
        if not hosts.several or student.teaching is not None:
            return  # Online, the teacher labels each batch within the step they share.
        table = self.experiment.relabeller.labels_in_use(student)
        apart = hosts.differing({"labels": hashlib.sha256(table.tobytes()).hexdigest()}).get("labels")
        if apart:
            raise RuntimeError(f"processes {apart} refined other labels than process 0.")

    def _labels_finite(self, trainer: Trainer) -> bool:
        """Whether the labels `trainer` trained on are finite for every training example:
        a diverged generation whose labels were not (a temperature so small that the
        logits divided by it overflow) is the refinement's fault, not the step's."""
        ids, _ = self.experiment.training_truth
        return bool(np.isfinite(self.experiment.relabeller.labels_in_use(trainer)[ids]).all())

    def _hand_on(self, generation: int, keys: list[str], refinement: Refinement) -> dict[str, Any]:
        """Labels for `generation + 1` from the model `generation` just trained; the
        relabel observed, and its under-fit figures if asked for."""
        experiment = self.experiment
        relabeller = experiment.relabeller
        trainer, student = experiment.trainer_for(generation), experiment.trainer_for(generation + 1)
        observe = self.on_relabel is not None or self.label_figures
        previous = None
        if observe:
            last = self._last_refined
            known = last is not None and last[0] == keys[generation - 1]
            previous = last[1] if known else relabeller.labels_in_use(trainer)
        relabeller.hand_on(trainer.classifier, student, refinement)
        self._labels_for = keys[generation]
        self._check_labels_alike(student)
        if not observe:
            return {}
        refined = relabeller.labels_in_use(student)
        self._last_refined = (keys[generation], refined)
        if self.on_relabel is not None:
            self.on_relabel(generation, previous, refined)
        if not self.label_figures:
            return {}
        return underfit.label_figures(refined, *experiment.training_truth, refinement.alpha)


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def best_generation(records: Sequence[Record]) -> int | None:
    """The generation with the highest validation accuracy (the first of ties); a
    diverged generation never counts."""
    finished = [r for r in records if not r.get("diverged")]
    if not finished:
        return None
    return max(finished, key=lambda r: r["val_accuracy"])["generation"]


def train_chain(
    data: InMemoryData,
    config: Config,
    validation: tuple[np.ndarray, np.ndarray],
    workdir: str | os.PathLike | None = None,
    callbacks: Callable[[int], Sequence[keras.callbacks.Callback]] | None = None,
) -> tuple[keras.Model, list[Record]]:
    """`config`'s chain on arrays held on the device, trained by the loop `run.py` uses.

    Reads the model, optimisation and refinery fields of `config`; `validation` is
    (images, labels), on which each epoch is scored and the best generation chosen.
    `workdir` keeps the store of trained generations, so the same call resumes a chain
    that was killed, and a longer chain reuses a shorter one's generations; None trains
    in a temporary folder, removed after. Returns the best generation's classifier (a
    model of its own) and every generation's record.
    """
    feed = MemoryFeed.of_arrays(data, validation, config.batch_size, config.seed, augment=config.augment)
    experiment = prepare_experiment(config, feed)
    with contextlib.ExitStack() as stack:
        folder = workdir or stack.enter_context(tempfile.TemporaryDirectory())
        store = GenerationStore(folder)
        records = ChainRunner(experiment, store).run(config.refinement, callbacks=callbacks)
        best = best_generation(records)
        if best is None:
            raise Diverged(records[0]["generation"], records[0]["epoch"])
        classifier = experiment.fresh_classifier(best)
        classifier.load_weights(store.weights_path(records[best - 1]["key"]))
    return classifier, records


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the generation in flight after every epoch (restoring it is the runner's,
    before `fit`).

    Keras's `BackupAndRestore` does this for one `fit`, but it overwrites its only
    backup in place (a kill mid-write loses it), deletes it when `fit` ends, keeps no
    figures, and writes Keras weights files, which cost 5-7x the time of the same arrays
    (bench/RESULTS.md). Here each checkpoint lands by rename next to the store entry
    it will become, and keeps every epoch's logs (`history`, with the learning rate at the
    epoch's end) and the time spent so far, so a generation resumed after its last epoch
    still has its record.
    """

    def __init__(self, store: GenerationStore, key: str, state: dict[str, Any] | None):
        super().__init__()
        self.store = store
        self.key = key
        self.logs: dict[str, float] = dict(state["logs"]) if state else {}
        self.history: list[dict[str, float]] = list(state.get("history", [])) if state else []
        self._seconds = state["seconds"] if state else 0.0
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, over every attempt at this generation."""
        return round(self._seconds + time.perf_counter() - self._since, 2)

    def on_train_begin(self, logs=None):
        self._since = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.logs = {name: float(value) for name, value in (logs or {}).items()}
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.history = [*self.history[:epoch], {"learning_rate": rate, **self.logs}]
        self.store.save_checkpoint(
            self.key,
            [keras.ops.convert_to_numpy(v) for v in self.model.training_state()],
            {"epoch": epoch + 1, "logs": self.logs, "history": self.history, "seconds": self.elapsed()},
        )


class StopCheck(keras.callbacks.Callback):
    """Raises a stop that a signal asked for and that did not get through, after every
    batch (`stops.check`)."""

    def on_train_batch_end(self, batch, logs=None):
        stops.check()


class _InGeneration(keras.callbacks.Callback):
    """Knows the generation and the 1-based epoch it is in, for the lines it reports."""

    def __init__(self, generation: int):
        super().__init__()
        self.generation = generation
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1


class DivergenceGuard(_InGeneration):
    """Raises `Diverged` as soon as a batch's loss, or an epoch's weights, are not finite."""

    def on_train_batch_end(self, batch, logs=None):
        if not np.isfinite(float((logs or {}).get("loss", 0.0))):
            raise Diverged(self.generation, self.epoch)

    def on_epoch_end(self, epoch, logs=None):
        weights = self.model.classifier.get_weights()
        if not all(np.isfinite(w).all() for w in weights):
            raise Diverged(self.generation, epoch + 1)


class FaultPoints(_InGeneration):
    """`faults.reached` after every training batch, for the kill -9 tests."""

    def on_train_batch_end(self, batch, logs=None):
        faults.reached(f"gen{self.generation}.epoch{self.epoch}.batch{batch + 1}")
