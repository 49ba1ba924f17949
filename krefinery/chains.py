"""Refinery chains that start from the longest stored prefix instead of from scratch.

Generation 1 depends on neither temperature nor alpha, and generation k of a chain at
(T, alpha) depends only on generation k-1 and (T, alpha), so chains share generation 1
and any chain extends the longest prefix already in the `GenerationCache`. Reuse is
exact, not approximate: each generation's initial weights are seeded by (seed, k), ops
are deterministic, and generation k trains on the same stream of shuffled, augmented
batches wherever its chain was started (`ChainRunner._generation_pipeline`), so a chain
continued from the cache equals the chain trained in one go by `train_and_evaluate`.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from krefinery.chain_cache import GenerationCache, chain_keys
from krefinery.pipeline import training_dataset
from krefinery.refinery import Experiment, LabelRefinery, run_generation


class ChainRunner:
    """Runs chains on one `Experiment`, loading every generation the cache already holds."""

    def __init__(self, experiment: Experiment, cache: GenerationCache, worker: str = "tuner0"):
        self.experiment = experiment
        self.cache = cache
        self.worker = worker
        self.ground_truth = experiment.labels.numpy()  # Generation 1's labels.
        # One per (T, alpha): each traces its relabelling step once, not once per trial.
        self._refineries: dict[tuple[float, float], LabelRefinery] = {}

    def run(
        self,
        generations: int,
        temperature: float,
        alpha: float,
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> list[dict[str, Any]]:
        """Per-generation figures of the chain; trains only the generations not cached.

        Each record holds `generation`, `val_accuracy`, ..., `key` and `trained`
        (whether this call trained it). A generation being trained by another process
        is waited for, not trained twice.
        """
        config = self.experiment.config
        keys = chain_keys(config, generations, temperature, alpha)
        refinery = self._refineries.get((temperature, alpha))
        if refinery is None:
            refinery = self.experiment.refinery(generations, temperature, alpha)
            self._refineries[(temperature, alpha)] = refinery
        refinery.generations = generations
        refinery.set_model(self.experiment.trainer)
        self._set_trainer_targets(temperature, alpha)
        ready_for = None  # The generation whose labels the trainer holds now.
        records = []
        for generation, key in enumerate(keys, start=1):
            record = self.cache.lookup(key)
            trained = False
            if record is None:
                with self.cache.lock(key):
                    record = self.cache.lookup(key)
                    if record is None:
                        if ready_for != generation:
                            self._prepare(refinery, generation, keys)
                        record = run_generation(
                            self.experiment,
                            refinery,
                            list(callbacks),
                            train_ds=self._generation_pipeline(generation),
                        )
                        record.update(temperature=temperature, alpha=alpha)
                        self.cache.store(key, self.experiment.trainer.classifier, record)
                        self.cache.log_training(
                            {
                                "key": key,
                                "generation": generation,
                                "temperature": temperature if generation > 1 else None,
                                "alpha": alpha if generation > 1 else None,
                                "epochs": config.epochs,
                                "worker": self.worker,
                            }
                        )
                        trained = True
                        # The callback relabelled for the next generation on train end.
                        ready_for = generation + 1
            records.append({**record, "generation": generation, "key": key, "trained": trained})
        return records

    def load(self, key: str) -> keras.Model:
        """The classifier, holding the cached generation `key`."""
        classifier = self.experiment.trainer.classifier
        classifier.load_weights(self.cache.weights_path(key))
        return classifier

    def _prepare(self, refinery, generation: int, keys: list[str]) -> None:
        """Puts the trainer where the chain stood just before `generation` was trained."""
        trainer = self.experiment.trainer
        refinery.generation = generation - 1
        if generation == 1:
            self.experiment.labels.assign(self.ground_truth)
            trainer.use_teacher(None)
            return
        self.load(keys[generation - 2])
        refinery.refine()

    def _set_trainer_targets(self, temperature: float, alpha: float) -> None:
        """Online relabelling reads T and alpha inside the traced step: retrace on change."""
        self.experiment.trainer.set_refinement(temperature, alpha)

    def _generation_pipeline(self, generation: int) -> tf.data.Dataset:
        """The batches generation k sees in a chain trained in one go, from a new pipeline.

        The shuffle and augmentation seeds advance with every iterator made over the
        pipeline. Keras's epoch iterator makes two per epoch for a dataset of known size
        (one as the epoch begins, and one, never read, as it ends), so
        generation k of a one-go chain reads iterators from `2 * epochs * (k - 1)` on.
        Making and dropping that many first reproduces its
        stream exactly (tests/test_tuning.py checks it against `train_and_evaluate`).
        The ops' seeds also take in the global seed, which `prepare_experiment` had set
        to the run seed when it made its pipeline; each classifier build changes it since.
        """
        experiment, config = self.experiment, self.experiment.config
        splits = experiment.splits
        keras.utils.set_random_seed(config.seed)
        dataset = training_dataset(
            splits.train,
            experiment.labels,
            config.batch_size,
            config.seed,
            experiment.augment,
            splits.num_train,
        )
        for _ in range(2 * config.epochs * (generation - 1)):
            iter(dataset)
        return dataset
