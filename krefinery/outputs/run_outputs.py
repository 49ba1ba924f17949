"""Everything a normal run leaves in its work directory, written by one owner.

`RunOutputs` follows the chain (`ChainRunner.run(callbacks=outputs.callbacks,
on_generation=outputs.on_generation)`) and, per generation, writes `gen_<k>.weights.h5`,
the TensorBoard sub-runs, `results.json` and `accuracy.png` (and the generation's
export with `--export_all_generations`); `finish` exports the best generation and only
then marks the run finished. Generations loaded from the store on a resumed run go
through the same steps, so the finished `results.json` is the same either way.

With `--control`, `on_control` records generation 2 of the chain at alpha = 1 (generation
2's seed and batches, ground-truth labels) as `"control"` in `results.json`, with its
weights in `control.weights.h5`, its epoch curves in the `control/{train,validation}`
TensorBoard sub-runs and its row in the `generation/table` text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from krefinery.analysis import underfit
from krefinery.chain.experiment import Experiment
from krefinery.chain.runner import best_generation
from krefinery.chain.store import GenerationStore
from krefinery.core.refinement import generation_seed
from krefinery.core.trainer import Trainer
from krefinery.errors import Damaged
from krefinery.outputs import charts, report, summaries, workdirs
from krefinery.outputs.export import export_once, intact
from krefinery.runtime.hosts import ALONE, Hosts

# The control mirrors generation 2: its seed and batches, the ground truth for labels.
CONTROL_OF = 2
CONTROL = "control"
CONTROL_WEIGHTS = "control.weights.h5"


class RunOutputs:
    """The work directory of one run: its per-generation outputs and its export."""

    def __init__(self, workdir: Path, experiment: Experiment, store: GenerationStore, hosts: Hosts = ALONE):
        self.workdir = workdir
        # Of several processes, each computes every figure; process 0 alone writes.
        self.writes = hosts.writer
        self.experiment = experiment
        self.config = experiment.config
        self.store = store
        self.generations: list[dict[str, Any]] = []
        self.control: dict[str, Any] | None = None
        self.fit_check = underfit.FitCheck(self.config)
        try:
            previous = report.read_results(workdir) or {}
        except Damaged:  # Said by `train._finished`; rebuilt here.
            previous = {}
        # Exports that landed before an interruption are kept, not made again, if whole.
        self.exports: dict[str, str] = {
            name: path for name, path in previous.get("exports", {}).items() if intact(path)
        }
        # One sub-run for both: each sub-run takes one of TensorBoard's 7 colours, and a
        # default run's 6 curves leave one.
        generations = workdir / "tensorboard" / summaries.GENERATIONS_RUN
        feed = experiment.feed
        self.relabel_summaries = summaries.RelabelSummaries(
            generations, feed.truth, feed.images, feed.info.class_names
        )
        self.generation_summaries = summaries.GenerationSummaries(generations)

    def callbacks(self, generation: int) -> list[keras.callbacks.Callback]:
        return [report.tensorboard_callback(self.workdir, generation)] if self.writes else []

    def control_callbacks(self, generation: int) -> list[keras.callbacks.Callback]:
        return [summaries.EpochSummaries(self.workdir / "tensorboard" / CONTROL)] if self.writes else []

    def on_relabel(self, generation: int, previous: np.ndarray, refined: np.ndarray) -> None:
        if self.writes:
            self.relabel_summaries(generation, previous, refined)

    def on_generation(self, record: dict[str, Any]) -> None:
        """Adds a stored generation to the run's outputs; rewrites `results.json`."""
        entry = {k: v for k, v in record.items() if k != "trained"}
        generation = record["generation"]
        entry["architecture"] = self.config.architecture(generation).to_dict()
        if not record.get("diverged"):
            model = self._load(record["key"], generation)
            test = model.evaluate(self.experiment.test, verbose=0, return_dict=True)
            weights = self.workdir / f"gen_{generation}.weights.h5"
            if self.writes:
                workdirs.keep_weights(self.store.weights_path(record["key"]), weights)
            entry.update(
                test_accuracy=float(test["accuracy"]),
                weights=weights.name,
                parameters=report.trainable_parameters(model.classifier),
            )
            entry.update(self._fit_figures(record, model))
            self.fit_check.check(generation, entry)
            if self.writes:
                self.generation_summaries.write(entry)
            if self.config.export_all_generations:
                self._export(f"gen_{generation}", record["key"], generation)
        self.generations.append(entry)
        self._write(finished=False)
        best = best_generation(self.generations)
        if best is not None and self.writes:
            trained = [g for g in self.generations if not g.get("diverged")]
            charts.accuracy_chart(trained, best, self.workdir / charts.ACCURACY_CHART)

    def on_control(self, record: dict[str, Any]) -> None:
        """Records the control: generation 2 of the chain at alpha = 1 (its generation 1
        is the run's own, loaded from the store)."""
        if record["generation"] != CONTROL_OF:
            return
        entry = {k: v for k, v in record.items() if k != "trained"}
        entry.update(
            generation="control",
            mirrors_generation=CONTROL_OF,
            architecture=self.config.architecture(CONTROL_OF).to_dict(),
        )
        if not record.get("diverged"):
            model = self._load(record["key"], CONTROL_OF)
            test = model.evaluate(self.experiment.test, verbose=0, return_dict=True)
            weights = self.workdir / CONTROL_WEIGHTS
            if self.writes:
                workdirs.keep_weights(self.store.weights_path(record["key"]), weights)
            entry.update(
                weight_seed=generation_seed(self.config.seed, CONTROL_OF),
                test_accuracy=float(test["accuracy"]),
                weights=weights.name,
                parameters=report.trainable_parameters(model.classifier),
                **self._fit_figures(record, model),
            )
        self.control = entry
        if self.writes:
            self.generation_summaries.write_control(entry)
        self._write(finished=False)

    def _fit_figures(self, record: dict[str, Any], model: Trainer) -> dict[str, Any]:
        """The under-fit figures: stored with the generation if it relabelled, else (the
        last generation, or labels at alpha = 1 that hide the model) the accuracy on the
        un-augmented training images of the weights `model` holds (the record's)."""
        fit = record.get(underfit.FIT_KEY)
        if fit is None:
            train = self.experiment.feed.train_unaugmented()
            fit = float(model.evaluate(train, verbose=0, return_dict=True)["accuracy"])
        disagreement = record.get(underfit.DISAGREEMENT_KEY)
        return {underfit.FIT_KEY: fit, underfit.DISAGREEMENT_KEY: disagreement}

    def finish(self) -> dict[str, Any]:
        """Exports the best generation (if any did not diverge), then writes the final
        `results.json`: `finished` is true only if the chain completed and the export landed."""
        best = best_generation(self.generations)
        if best is not None:
            self._export("best", self.generations[best - 1]["key"], best)
        complete = len(self.generations) == self.config.generations and not any(
            g.get("diverged") for g in self.generations
        )
        return self._write(finished=complete and best is not None)

    def _load(self, key: str, generation: int) -> Trainer:
        """A reader of `generation`'s architecture holding the stored generation `key`."""
        return self.experiment.stored(self.store.weights_path(key), generation)

    def close(self) -> None:
        self.relabel_summaries.close()
        self.generation_summaries.close()

    def _export(self, name: str, key: str, generation: int) -> None:
        """Exports the stored generation `key` as `name` ("best" or "gen_<k>") once: a
        version that landed before a kill (its `source` matches) is reused."""
        if name in self.exports or not self.writes:
            return
        experiment = self.experiment
        info = experiment.info
        with experiment.replication.here():  # Process 0 exports alone.
            path = export_once(
                experiment.exportable(self.store.weights_path(key), generation),
                info.class_names, info.image_shape, self.config, self.workdir, key,
                None if name == "best" else generation,
            )
        self.exports[name] = os.fspath(path)

    def _runtime(self) -> dict[str, Any]:
        """The experiment's runtime, with what `--precision=auto` measured here, if it did."""
        measured = self.experiment.precision_measured
        return {**self.experiment.runtime, **({"precision_measured": measured} if measured else {})}

    def _write(self, finished: bool) -> dict[str, Any]:
        record = report.results_record(
            self.config,
            self.experiment.info,
            self.generations,
            self.workdir,
            finished,
            self._runtime(),
            self.exports,
        )
        if self.control is not None:
            record["control"] = self.control
        if self.writes:
            report.write_results(self.workdir, record)
        return record
