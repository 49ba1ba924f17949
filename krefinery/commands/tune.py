"""keras-tuner search over generations, temperature and alpha that never retrains a prefix.

A trial is a chain (generations G, temperature T, alpha). Its objective, `val_accuracy`,
is the validation accuracy of the chain's chosen generation: the best of generations
1..G, as in a normal run, so the best trial also says how many generations pay off.
The search follows keras-tuner's "tune anything" pattern: `ChainTuner.run_trial` runs
the trial's chain through `chains.ChainRunner` (the loop a normal run uses) and returns
its metrics; the runner trains only what no earlier trial, worker or interrupted run of
the same search has stored, and continues a generation in flight from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from krefinery.chain.experiment import Experiment, prepare_experiment
from krefinery.chain.runner import ChainRunner
from krefinery.chain.store import GenerationStore
from krefinery.commands.search_space import TuneConfig
from krefinery.config import Config, Refinement
from krefinery.data.feed import DataInfo
from krefinery.errors import Damaged, DiskFull, Interrupted, SearchDiverged, UserError
from krefinery.outputs import report, summaries, workdirs
from krefinery.outputs.export import export_once, prepare_export_dir

TUNING = workdirs.SEARCH.record
PROJECT = "search"
OBJECTIVE = "val_accuracy"


class SearchSpace:
    """The hyperparameters of a trial's chain, registered with the oracle in advance
    (its documented `hyperparameters` argument), so that every oracle, Bayesian
    included, knows the whole space from the first trial."""

    def __init__(self, search: TuneConfig, alpha: float):
        self.search = search
        self.alpha = alpha

    def hyperparameters(self) -> kt.HyperParameters:
        hp = kt.HyperParameters()
        low, high = self.search.generations
        if self.search.tuner != "hyperband":  # Hyperband's budget is the generation count.
            hp.Int("generations", low, high)
        hp.Choice("temperature", self.search.temperatures())
        hp.Choice("alpha", self.search.alphas(self.alpha))
        return hp

    def refinement(self, hp: kt.HyperParameters) -> Refinement:
        """The chain a trial trains."""
        return Refinement(self.generations(hp), float(hp.get("temperature")), float(hp.get("alpha")))

    def generations(self, hp: kt.HyperParameters) -> int:
        if "generations" in hp.values:
            return int(hp.get("generations"))
        low, high = self.search.generations
        return min(max(int(hp.get("tuner/epochs")), low), high)


class ChainTuner(kt.Tuner):
    """A keras-tuner `Tuner` whose trials are refinery chains.

    `run_trial` returns the metrics: `val_accuracy` (the chosen generation's),
    `val_accuracy_gen_<k>` for each generation that did not diverge, `chosen_generation`,
    `epochs_trained` and, if the chain diverged, `diverged_generation`. A chain whose
    generation 1 diverged has no generation to choose: its objective is NaN, which
    keras-tuner records as a failed trial. Generation 1 is the same in every trial, so
    then every trial fails (the later ones at once, from the stored divergence) and
    `tune` raises `SearchDiverged`.
    Every trial gets an HParams session, `<workdir>/tensorboard/trial_<id>`, with the
    curves of its chain's generations as its sub-runs `gen_<k>/{train,validation}`:
    written as it trains them, or from the stored record's `history`.
    """

    def __init__(
        self,
        oracle: kt.Oracle,
        space: SearchSpace,
        config: Config,
        store: GenerationStore,
        workdir: Path,
        experiment: Experiment | None,
        worker: str,
    ):
        super().__init__(
            oracle=oracle,
            directory=os.fspath(workdir),
            project_name=PROJECT,
            overwrite=False,
        )
        self.space = space
        self.config = config
        self.store = store
        self.workdir = workdir
        self.runner = None if experiment is None else ChainRunner(experiment, store, worker)
        self.hparams_config = summaries.hparams_config(
            space.search.generations,
            space.search.temperatures(),
            space.search.alphas(config.alpha),
            fixed_hparams(config),
        )

    def run_trial(self, trial: kt.engine.trial.Trial, *args, **kwargs) -> dict[str, float]:
        refinement = self.space.refinement(trial.hyperparameters)
        hparams = {**dataclasses.asdict(refinement), **fixed_hparams(self.config)}
        try:
            # The generations this trial trains leave their curves under its session.
            records = self.runner.run(
                refinement, callbacks=lambda k: [summaries.EpochSummaries(self._logdir(trial) / f"gen_{k}")]
            )
        except (DiskFull, UserError) as error:
            raise kt.errors.FatalError(str(error)) from error  # Not a failed trial: stop.
        except Interrupted as stop:
            # Not an Exception, so keras-tuner records nothing: the trial stays in flight,
            # and the oracle gives it again when the search is resumed.
            raise stop.within(f"trial {trial.trial_id}")
        for record in records:
            # A generation from the store has its curves under the trial that trained it;
            # this trial's session gets them too, so each trial shows its whole chain.
            curves = self._logdir(trial) / f"gen_{record['generation']}"
            if not record["trained"] and record.get("history") and not curves.exists():
                summaries.write_epoch_curves(curves, record["history"])
        finished = [r for r in records if not r.get("diverged")]
        diverged = [r["generation"] for r in records if r.get("diverged")]
        trained = sum(self.config.epochs for r in records if r["trained"])
        if not finished:
            summaries.write_trial_hparams(
                self._logdir(trial), trial.trial_id, hparams, {}, "FAILED", self.hparams_config
            )
            # No model, so no objective. keras-tuner's oracle (`Oracle.end_trial`) records
            # a NaN score as INVALID and, with no retries left, as FAILED, without the
            # traceback it prints for a raised `FailedTrialError`.
            return {OBJECTIVE: float("nan"), "diverged_generation": 1, "epochs_trained": trained}
        chosen = max(finished, key=lambda r: r["val_accuracy"])  # First of ties: fewer generations.
        session = summaries.trial_metrics(chosen, finished, trained)
        metrics = {
            OBJECTIVE: chosen["val_accuracy"],
            "chosen_generation": chosen["generation"],
            "epochs_trained": trained,
            **{f"val_accuracy_gen_{r['generation']}": r["val_accuracy"] for r in finished},
        }
        if diverged:
            metrics["diverged_generation"] = diverged[0]
        summaries.write_trial_hparams(
            self._logdir(trial), trial.trial_id, hparams, session, "COMPLETED", self.hparams_config
        )
        return metrics

    def _logdir(self, trial: kt.engine.trial.Trial) -> Path:
        return self.workdir / "tensorboard" / f"trial_{trial.trial_id}"


class _HyperbandOracle(kt.oracles.HyperbandOracle):
    """Hyperband with a trial budget, like the other oracles' `max_trials`."""

    def __init__(self, max_trials: int, **kwargs):
        super().__init__(**kwargs)
        self.max_trials = max_trials


def make_oracle(space: SearchSpace, seed: int) -> kt.Oracle:
    """keras-tuner's oracle for `--tuner`; keras-tuner draws a random seed when given 0."""
    search = space.search
    common = dict(
        objective=kt.Objective(OBJECTIVE, "max"),
        seed=seed + 1,
        hyperparameters=space.hyperparameters(),
        # A failed trial is not retried, and failures never stop the search midway with
        # keras-tuner's RuntimeError: a trial fails only when the shared generation 1
        # diverged, the later ones learn it from the store at no cost, and `tune` reports
        # it once every trial is recorded.
        max_retries_per_trial=0,
        max_consecutive_failed_trials=sys.maxsize,
    )
    if search.tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=search.max_trials, **common)
    if search.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=search.max_trials, **common)
    return _HyperbandOracle(
        search.max_trials, max_epochs=search.generations[1], factor=2, **common
    )


def tune(config: Config, search: TuneConfig) -> dict[str, Any] | None:
    """Runs (or resumes) the search that `config` and `search` describe.

    Returns the `tuning.json` record, or None on a distributed worker: there only the
    chief (keras-tuner's `KERASTUNER_TUNER_ID=chief`) reports. Bad input is reported
    before anything is created; a full disk raises `DiskFull` (rerun to resume). If no
    trial completed (generation 1 diverged), raises `SearchDiverged`: nothing is
    exported and no `tuning.json` written, and the trials stay recorded as failed.
    """
    marker = search_settings(config, search)
    workdir = workdirs.check(config, workdirs.SEARCH, marker)
    worker = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    distributed = "KERASTUNER_ORACLE_IP" in os.environ
    chief = distributed and worker.startswith("chief")
    # The processes of a distributed search share the folder; the store locks each generation.
    with workdirs.claim(config, workdirs.SEARCH, workdir, exclusive=not distributed) as held:
        prepare_export_dir(config)
        # The chief only runs the oracle; everyone else trains, so loads the data first.
        experiment = None if chief else prepare_experiment(config)
        held.mark(marker)
        return _search(config, search, held.path, experiment, worker, reports=chief or not distributed)


def _search(
    config: Config,
    search: TuneConfig,
    workdir: Path,
    experiment: Experiment | None,
    worker: str,
    reports: bool,
) -> dict[str, Any] | None:
    """The search in `workdir`; its record where this process `reports` (one not
    distributed, or the chief), else None."""
    store = GenerationStore(workdir / "generations")
    space = SearchSpace(search, config.alpha)
    tuner = ChainTuner(
        make_oracle(space, config.seed), space, config, store, workdir, experiment, worker
    )
    try:
        with warnings.catch_warnings():
            # numpy's, as keras-tuner reads the best of a failed trial's NaN objective.
            warnings.filterwarnings("ignore", "All-NaN axis encountered", RuntimeWarning)
            tuner.search(verbose=config.verbose)
    except kt.errors.FatalError as fatal:
        if isinstance(fatal.__cause__, (DiskFull, UserError)):
            raise fatal.__cause__ from None
        raise
    if not reports:
        return None
    # The chief, which trained nothing, reads the data now: the best trial is evaluated.
    runner = tuner.runner or ChainRunner(prepare_experiment(config), store, worker)
    check_some_trial_completed(tuner, runner, workdir)
    record = summarise(tuner, runner, workdir)
    workdirs.write_record(workdir / TUNING, record)
    return record


def check_some_trial_completed(tuner: ChainTuner, runner: ChainRunner, workdir: Path) -> None:
    """Raises `SearchDiverged` if the oracle recorded no trial as completed because the
    stored generation 1 diverged: there is no model to report or export. Trials that
    failed otherwise (a bug: keras-tuner keeps their tracebacks) raise RuntimeError."""
    trials = list(tuner.oracle.trials.values())
    if any(t.status == kt.engine.trial.TrialStatus.COMPLETED for t in trials):
        return
    first = runner.keys(Refinement(1))[0]
    try:
        stored = runner.store.lookup(first)
    except Damaged:  # Not known to have diverged.
        stored = None
    if stored is not None and stored.get("diverged"):
        raise SearchDiverged(workdir, len(trials))
    raise RuntimeError(
        f"no trial of the search in {workdir} completed; the last one failed with:\n"
        + (trials[-1].message or "no message")
    )


def fixed_hparams(config: Config) -> dict[str, int | str]:
    """The refinery's architecture where it is its own (`refinery_depth`, ...): the same
    in every trial, and what tells this search's trials from those of another refinery."""
    if config.refinery_model is not None:
        return {"refinery_model": config.refinery_model}
    refinery = config.architecture(1)
    if refinery == config.architecture(2):
        return {}
    return {f"refinery_{name}": value for name, value in refinery.to_dict().items()}


def search_settings(config: Config, search: TuneConfig) -> dict[str, Any]:
    # A resumed search may be given more trials.
    return workdirs.marker_of(config, search={k: v for k, v in search.to_dict().items() if k != "max_trials"})


def summarise(tuner: ChainTuner, runner: ChainRunner, workdir: Path) -> dict[str, Any]:
    """The `tuning.json` record; the test split is evaluated here, once, for the best trial."""
    config, space = tuner.config, tuner.space
    trials = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        hp = trial.hyperparameters
        entry = {
            "trial_id": trial.trial_id,
            "status": str(trial.status),
            "generations": space.generations(hp),
            "temperature": float(hp.get("temperature")),
            "alpha": float(hp.get("alpha")),
        }
        if trial.status == kt.engine.trial.TrialStatus.COMPLETED:
            metric, known = trial.metrics.get_last_value, trial.metrics.exists
            entry.update(
                val_accuracy=[
                    metric(f"val_accuracy_gen_{k}")
                    for k in range(1, entry["generations"] + 1)
                    if known(f"val_accuracy_gen_{k}")
                ],
                chosen_generation=int(metric("chosen_generation")),
                objective=metric(OBJECTIVE),
                epochs_trained=int(metric("epochs_trained")),
            )
            if known("diverged_generation"):
                entry["diverged_generation"] = int(metric("diverged_generation"))
        trials.append(entry)
    completed = [t for t in trials if "objective" in t]
    # The highest objective; of ties, the first trial (keras-tuner's own order of ties
    # may differ once a search is reloaded, and the best trial is what gets exported).
    best = max(completed, key=lambda t: (t["objective"], -int(t["trial_id"])))
    chosen = Refinement(best["chosen_generation"], best["temperature"], best["alpha"])
    key = runner.keys(chosen)[-1]
    model = runner.stored(key, chosen.generations)
    test = model.evaluate(runner.experiment.test, verbose=0, return_dict=True)
    weights, export = save_best_model(model.classifier, runner.store, key, workdir, config, runner.experiment.info)
    trained = runner.store.trained()
    return {
        "dataset": config.dataset,
        "config": config.to_dict(),
        "search": space.search.to_dict(),
        "objective": "val_accuracy of each trial's chosen generation (best of 1..generations)",
        "trials": trials,
        "best": {
            "trial_id": best["trial_id"],
            "temperature": best["temperature"],
            "alpha": best["alpha"],
            "generations": best["chosen_generation"],
            "val_accuracy": best["objective"],
            "test_accuracy": float(test["accuracy"]),
            "weights": weights.name,
            "export": os.fspath(export),
        },
        "epochs": {
            "trained": sum(entry["epochs"] for entry in trained),
            "naive": sum(t["generations"] * config.epochs for t in completed),
            "per_generation": config.epochs,
            "generations_trained": trained,
        },
        "workdir": os.fspath(workdir),
    }


def save_best_model(
    classifier: keras.Model, store: GenerationStore, key: str, workdir: Path, config: Config, info: DataInfo
) -> tuple[Path, Path]:
    """The one place where the best model leaves the search, as a normal run's does.

    Keeps the chosen generation's weights as `best.weights.h5` and exports it to
    `<export_dir>/<name>/`, once: a rerun of the search, or one resumed after a kill,
    finds the version it exported (`export.export_once`).
    """
    path = workdirs.keep_weights(store.weights_path(key), workdir / "best.weights.h5")
    export = export_once(classifier, info.class_names, info.image_shape, config, workdir, key)
    return path, export


def format_trials(record: dict[str, Any]) -> str:
    """The trial table and the epoch accounting printed at the end of a search."""
    longest = max(len(t.get("val_accuracy", [])) for t in record["trials"])
    header = ("trial", "gens", "T", "alpha", *(f"val g{k}" for k in range(1, longest + 1)), "chosen", "epochs")
    best_id = record["best"]["trial_id"]
    rows = []
    for t in record["trials"]:
        accuracies = [f"{a:.4f}" for a in t.get("val_accuracy", [])]
        rows.append(
            (
                t["trial_id"] + ("*" if t["trial_id"] == best_id else ""),
                str(t["generations"]),
                f"{t['temperature']:g}",
                f"{t['alpha']:g}",
                *accuracies,
                *[""] * (longest - len(accuracies)),
                str(t.get("chosen_generation", t["status"])),
                str(t.get("epochs_trained", "")),
            )
        )
    lines = report.table(header, rows)
    best, epochs = record["best"], record["epochs"]
    lines += [
        f"* best: T={best['temperature']:g}, alpha={best['alpha']:g}, {best['generations']} "
        f"generation(s): val accuracy {best['val_accuracy']:.4f}, test accuracy "
        f"{best['test_accuracy']:.4f}"
        + (" (T and alpha do not act on generation 1)" if best["generations"] == 1 else ""),
        f"epochs trained: {epochs['trained']} (a naive search of these trials: "
        f"{epochs['naive']}); results in {record['workdir']}/{TUNING}",
    ]
    return "\n".join(lines)

