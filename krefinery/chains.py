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
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np

from krefinery import faults, underfit
from krefinery.chain_cache import GenerationCache, chain_keys
from krefinery.errors import Diverged
from krefinery.experiment import Experiment
from krefinery.label_refinery import LabelRefinery
from krefinery.pipeline import eval_dataset
from krefinery.train import Trainer

Record = dict[str, Any]


class ChainRunner:
    """Runs chains on one `Experiment`, loading every generation the store already holds.

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
        cache: GenerationCache,
        worker: str = "tuner0",
        on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        label_figures: bool = False,
    ):
        self.experiment = experiment
        # Whether each relabel's under-fit figures go into its generation's record (a run's
        # outputs report them; a search need not pay for reading online labels back).
        self.label_figures = label_figures
        self.cache = cache
        self.worker = worker
        self.on_relabel = on_relabel
        # One per (T, alpha): each traces its relabelling step once, not once per trial.
        self._refineries: dict[tuple[float, float], LabelRefinery] = {}
        # ((T, alpha), key): the stored generation whose refined labels the trainer
        # holds now (the table offline, the teacher online), if any.
        self._labels_from: tuple[tuple[float, float], str] | None = None
        # The under-fit figures of the last relabel, and the training ids' ground truth.
        self._label_figures: dict[str, Any] | None = None
        self._truth: tuple[np.ndarray, np.ndarray] | None = None

    def keys(self, generations: int, temperature: float, alpha: float) -> list[str]:
        return chain_keys(
            self.experiment.config, self.experiment.runtime, generations, temperature, alpha
        )

    def run(
        self,
        generations: int,
        temperature: float,
        alpha: float,
        callbacks: Callable[[int], Sequence[keras.callbacks.Callback]] | None = None,
        on_generation: Callable[[Record], None] | None = None,
    ) -> list[Record]:
        """The records of the chain's generations, up to the first diverged one.

        Trains only what the store lacks. `callbacks(k)` gives extra callbacks for
        generation k's `fit` (TensorBoard, say); `on_generation(record)` sees each
        generation, stored or trained, as soon as it is in the store. A generation
        being trained by another process is waited for, not trained twice.
        """
        keys = self.keys(generations, temperature, alpha)
        refinery = self._refinery(temperature, alpha)
        refinery.generations = generations
        records = []
        for generation, key in enumerate(keys, start=1):
            record = self.cache.lookup(key)
            trained = False
            if record is None:
                with self.cache.lock(key):
                    record = self.cache.lookup(key)
                    if record is None:
                        self._prepare(refinery, generation, keys)
                        extra = list(callbacks(generation)) if callbacks else []
                        record = self._train(refinery, generation, key, extra)
                        trained = True
                        faults.reached(f"gen{generation}.stored")
            record = {**record, "generation": generation, "key": key, "trained": trained}
            records.append(record)
            if on_generation is not None:
                on_generation(record)
            if record.get("diverged"):
                break
            faults.reached(f"gen{generation}.relabelled")
        return records

    def load(self, key: str, generation: int) -> Trainer:
        """The trainer of `generation`, its classifier holding the stored generation `key`
        (whose weights file has that generation's architecture)."""
        return self.experiment.load(self.cache.weights_path(key), generation)

    def _refinery(self, temperature: float, alpha: float) -> LabelRefinery:
        refinery = self._refineries.get((temperature, alpha))
        if refinery is None:
            on_relabel = self.on_relabel
            if self.label_figures:
                on_relabel = functools.partial(self._relabelled, alpha)
            refinery = self.experiment.refinery(1, temperature, alpha, on_relabel=on_relabel)
            self._refineries[(temperature, alpha)] = refinery
        return refinery

    def _relabelled(
        self, alpha: float, generation: int, previous: np.ndarray, refined: np.ndarray
    ) -> None:
        """Reads the under-fit figures off the relabel that just ran, then tells `on_relabel`."""
        if self._truth is None:
            ids, truth = [], []
            pairs = self.experiment.splits.train.map(lambda e: (e["id"], e["label"]))
            for batch_ids, batch_truth in eval_dataset(pairs).as_numpy_iterator():
                ids.append(batch_ids)
                truth.append(batch_truth)
            self._truth = (np.concatenate(ids), np.concatenate(truth))
        self._label_figures = underfit.label_figures(refined, *self._truth, alpha)
        if self.on_relabel is not None:
            self.on_relabel(generation, previous, refined)

    def _prepare(self, refinery: LabelRefinery, generation: int, keys: list[str]) -> None:
        """Puts the labels where the chain had them just before `generation` trained."""
        if generation == 1:
            self.experiment.reset_labels()
            refinery.restart()
        else:
            parent = keys[generation - 2]
            if self._labels_from != ((refinery.temperature, refinery.alpha), parent):
                self.load(parent, generation - 1)
                refinery.continue_after(generation - 1)
        refinery.generation = generation - 1

    def _train(
        self,
        refinery: LabelRefinery,
        generation: int,
        key: str,
        extra: list[keras.callbacks.Callback],
    ) -> Record:
        """Trains `generation` (from its checkpoint, if any), stores it, returns its record."""
        experiment, config = self.experiment, self.experiment.config
        trainer = experiment.trainer_for(generation)
        state = self.cache.checkpoint(key)
        initial_epoch = state["epoch"] if state else 0
        checkpoint = EpochCheckpoint(self.cache, key, state)
        guard = DivergenceGuard(generation)
        points = [FaultPoints(generation)] if faults.active() else []
        record: Record = {
            "generation": generation,
            "temperature": refinery.temperature if generation > 1 else None,
            "alpha": refinery.alpha if generation > 1 else None,
            "epochs": config.epochs,
        }
        self._labels_from = None
        self._label_figures = None
        if config.verbose:
            resumed = f", resumed after epoch {initial_epoch}" if initial_epoch else ""
            print(f"Generation {generation}/{refinery.generations}{resumed}", flush=True)
        try:
            trainer.fit(
                experiment.training_dataset(generation, initial_epoch),
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=experiment.steps_per_epoch,
                validation_data=experiment.val_ds,
                shuffle=False,  # The pipeline shuffles, seeded.
                # The guard before the checkpoint: a diverged epoch is never saved.
                callbacks=[refinery, guard, checkpoint, *points, *extra],
                verbose=config.verbose,
            )
        except Diverged as diverged:
            record.update(diverged=True, epoch=diverged.epoch, seconds=checkpoint.elapsed())
            self.cache.store(key, None, record)
            return record
        logs = checkpoint.logs
        record.update(
            val_accuracy=logs["val_accuracy"],
            train_accuracy=logs["accuracy"],
            train_label_agreement=logs["label_agreement"],
            train_label_entropy=logs["label_entropy"],
            seconds=checkpoint.elapsed(),
            **(self._label_figures or {}),
        )
        self.cache.store(key, trainer.classifier, record)
        self.cache.log_training(
            {
                "key": key,
                "generation": generation,
                "temperature": record["temperature"],
                "alpha": record["alpha"],
                "epochs": config.epochs - initial_epoch,
                "worker": self.worker,
            }
        )
        # The refinery relabelled for the next generation as training ended.
        if refinery.generation < refinery.generations:
            self._labels_from = ((refinery.temperature, refinery.alpha), key)
        return record


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the generation in flight after every epoch; restores it as training begins.

    Keras's `BackupAndRestore` does this for one `fit`, but it overwrites its only
    backup in place (a kill mid-write loses it), deletes it when `fit` ends, keeps no
    figures, and writes Keras weights files, which cost 5-7x the time of the same arrays
    (bench/RESULTS.md). Here each checkpoint lands by rename next to the store entry
    it will become, and keeps the last epoch's logs and the time spent so far, so a
    generation resumed after its last epoch still has its record. Placed after
    `LabelRefinery`, whose fresh start it then overwrites with the saved state.
    """

    def __init__(self, cache: GenerationCache, key: str, state: dict[str, Any] | None):
        super().__init__()
        self.cache = cache
        self.key = key
        self.state = state
        self.logs: dict[str, float] = dict(state["logs"]) if state else {}
        self._seconds = state["seconds"] if state else 0.0
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, over every attempt at this generation."""
        return round(self._seconds + time.perf_counter() - self._since, 2)

    def on_train_begin(self, logs=None):
        self._since = time.perf_counter()
        if self.state is None:
            return
        variables = training_state(self.model)
        arrays = self.cache.checkpoint_arrays(self.key)
        shapes = [tuple(v.shape) for v in variables]
        if shapes != [a.shape for a in arrays]:
            raise RuntimeError(
                f"the checkpoint {self.state['weights']} does not fit this model; "
                "remove it to train its generation again."
            )
        for variable, value in zip(variables, arrays):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        self.logs = {name: float(value) for name, value in (logs or {}).items()}
        self.cache.save_checkpoint(
            self.key,
            [keras.ops.convert_to_numpy(v) for v in training_state(self.model)],
            {"epoch": epoch + 1, "logs": self.logs, "seconds": self.elapsed()},
        )


def training_state(trainer: keras.Model) -> list[keras.Variable]:
    """What training continues from: the trainer's weights (the classifier's, batch-norm
    statistics included, and online the teacher's) and the optimizer's variables
    (momenta, iteration count, loss scale), built if they were not yet."""
    optimizer = trainer.optimizer
    if not optimizer.built:
        optimizer.build(trainer.classifier.trainable_variables)
    return [*trainer.weights, *optimizer.variables]


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
