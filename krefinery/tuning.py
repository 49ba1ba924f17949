"""keras-tuner search over generations, temperature and alpha that never retrains a prefix.

A trial is a chain (generations G, temperature T, alpha). Its objective, `val_accuracy`,
is the validation accuracy of the chain's chosen generation: the best of generations
1..G, as in a normal run, so the best trial also says how many generations pay off.
Trials run their chains through `chains.ChainRunner`, which trains only what no
earlier trial, worker or interrupted run of the same search has stored.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf

from krefinery import reporting, summaries
from krefinery.chain_cache import GenerationCache, chain_keys
from krefinery.chains import ChainRunner
from krefinery.config import Config
from krefinery.errors import UserError
from krefinery.export import export_generation, prepare_export_dir
from krefinery.pipeline import Splits
from krefinery.refinery import prepare_experiment
from krefinery.search_space import TuneConfig

TUNING = "tuning.json"
SEARCH = "search.json"
PROJECT = "search"
OBJECTIVE = "val_accuracy"


class RefineryHyperModel(kt.HyperModel):
    """The refinery chain as a keras-tuner `HyperModel`.

    `build(hp)` declares the search space and returns the `Trainer` (built once per
    process, reused by every trial). `fit(hp, model, callbacks=...)` runs the trial's
    chain through `ChainRunner` and returns its metrics: `val_accuracy` (the chosen
    generation's), `val_accuracy_gen_<k>` for k = 1..G, `chosen_generation` and
    `epochs_trained`. keras-tuner's callbacks go to every generation it trains.
    """

    def __init__(self, config: Config, search: TuneConfig, cache: GenerationCache, worker: str):
        super().__init__(name="label_refinery", tunable=True)
        self.config = config
        self.search = search
        self.cache = cache
        self.worker = worker
        self._runner: ChainRunner | None = None

    @property
    def runner(self) -> ChainRunner:
        if self._runner is None:
            self._runner = ChainRunner(prepare_experiment(self.config), self.cache, self.worker)
        return self._runner

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        low, high = self.search.generations
        if self.search.tuner != "hyperband":  # Hyperband's budget is the generation count.
            hp.Int("generations", low, high)
        hp.Choice("temperature", self.search.temperatures())
        hp.Choice("alpha", self.search.alphas(self.config.alpha))
        trainer = self.runner.experiment.trainer
        if not trainer.built:  # `fit` never calls the trainer itself; saving needs it built.
            trainer(tf.zeros((1, *self.runner.experiment.splits.image_shape), tf.uint8))
        return trainer

    def generations(self, hp: kt.HyperParameters) -> int:
        if "generations" in hp.values:
            return int(hp.get("generations"))
        low, high = self.search.generations
        return min(max(int(hp.get("tuner/epochs")), low), high)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, callbacks=None, **kwargs):
        generations = self.generations(hp)
        temperature, alpha = float(hp.get("temperature")), float(hp.get("alpha"))
        callbacks = list(callbacks or [])
        checkpoints = [c for c in callbacks if type(c).__name__ == "SaveBestEpoch"]
        boards = [c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)]
        passed = [
            c
            for c in callbacks
            if c not in checkpoints and c not in boards and not _is_hparams_callback(c)
        ]
        records = self.runner.run(generations, temperature, alpha, passed)
        chosen = max(records, key=lambda r: r["val_accuracy"])  # First of ties: fewer generations.
        metrics = {
            OBJECTIVE: chosen["val_accuracy"],
            "chosen_generation": chosen["generation"],
            "epochs_trained": sum(self.config.epochs for r in records if r["trained"]),
            **{f"val_accuracy_gen_{r['generation']}": r["val_accuracy"] for r in records},
        }
        # keras-tuner's own tools (get_best_models, Hyperband) read this checkpoint.
        self.runner.load(chosen["key"])
        for checkpoint in checkpoints:
            model.save_weights(checkpoint.filepath)
        hparams = {"generations": generations, "temperature": temperature, "alpha": alpha}
        for board in boards:  # keras-tuner logs each trial to <log_dir>/<trial_id>/execution<n>.
            trial_id = Path(board.log_dir).parent.name
            summaries.write_trial_hparams(board.log_dir, trial_id, hparams, metrics, "COMPLETED")
        return metrics


class _Hyperband(kt.Hyperband):
    """Hyperband whose "continue a trial" is the chain cache, not the trial's checkpoint."""

    def _build_hypermodel(self, hp):
        return kt.Tuner._build_hypermodel(self, hp)


def make_tuner(hypermodel: RefineryHyperModel, workdir: Path) -> kt.Tuner:
    """keras-tuner's tuner over `workdir/search`; an existing project there is resumed."""
    search, seed = hypermodel.search, hypermodel.config.seed
    common = dict(
        hypermodel=hypermodel,
        objective=kt.Objective(OBJECTIVE, "max"),
        # keras-tuner draws a random seed when given 0.
        seed=seed + 1,
        directory=os.fspath(workdir),
        project_name=PROJECT,
        overwrite=False,
    )
    if search.tuner == "random":
        return kt.RandomSearch(max_trials=search.max_trials, **common)
    if search.tuner == "bayesian":
        return kt.BayesianOptimization(max_trials=search.max_trials, **common)
    tuner = _Hyperband(max_epochs=search.generations[1], factor=2, **common)
    tuner.oracle.max_trials = search.max_trials
    return tuner


def tune(config: Config, search: TuneConfig) -> dict[str, Any] | None:
    """Runs (or resumes) the search that `config` and `search` describe.

    Returns the `tuning.json` record, or None on a distributed worker: there only the
    chief (keras-tuner's `KERASTUNER_TUNER_ID=chief`) reports.
    """
    workdir = tuning_workdir(config, search)
    prepare_export_dir(config)
    worker = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    cache = GenerationCache(workdir / "generations")
    hypermodel = RefineryHyperModel(config, search, cache, worker)
    tuner = make_tuner(hypermodel, workdir)
    board = keras.callbacks.TensorBoard(
        log_dir=os.fspath(workdir / "tensorboard"), write_graph=False, profile_batch=0
    )
    summaries.write_hparams_config(
        workdir / "tensorboard", search.generations, search.temperatures(), search.alphas(config.alpha)
    )
    tuner.search(callbacks=[board], verbose=config.verbose)
    if "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in worker:
        return None
    record = summarise(tuner, hypermodel, workdir)
    (workdir / TUNING).write_text(json.dumps(record, indent=2) + "\n")
    return record


# Where outputs go, not what is trained: a resumed search may change these.
_NOT_RESUME_SETTINGS = ("workdir", "verbose", "export_dir", "export_name", "export_all_generations")


def tuning_workdir(config: Config, search: TuneConfig) -> Path:
    """`--workdir`, or a new `runs/tune-<dataset>-<time>`. A search already there resumes,
    unless it was started with other settings (then that is an error).
    """
    workdir = reporting.workdir_path(config, prefix="tune-")
    settings = {
        "config": {k: v for k, v in config.to_dict().items() if k not in _NOT_RESUME_SETTINGS},
        # A resumed search may be given more trials.
        "search": {k: v for k, v in search.to_dict().items() if k != "max_trials"},
    }
    settings = json.loads(json.dumps(settings))  # Tuples as lists, as they are read back.
    path = workdir / SEARCH
    if path.exists():
        if json.loads(path.read_text()) != settings:
            raise UserError(
                f"--workdir={workdir} holds a search with other settings ({path}); "
                "rerun it with the same flags to resume it, or choose another --workdir."
            )
    elif (workdir / "results.json").exists():
        raise UserError(f"--workdir={workdir} holds a normal run; choose another --workdir.")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --workdir={workdir}: {error.strerror}.") from None
    if not path.exists():
        temporary = workdir / f".{SEARCH}.{os.getpid()}"
        temporary.write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(temporary, path)
    return workdir


def summarise(tuner: kt.Tuner, hypermodel: RefineryHyperModel, workdir: Path) -> dict[str, Any]:
    """The `tuning.json` record; the test split is evaluated here, once, for the best trial."""
    config, runner = hypermodel.config, hypermodel.runner
    trials = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        hp = trial.hyperparameters
        entry = {
            "trial_id": trial.trial_id,
            "status": str(trial.status),
            "generations": hypermodel.generations(hp),
            "temperature": float(hp.get("temperature")),
            "alpha": float(hp.get("alpha")),
        }
        if trial.status == kt.engine.trial.TrialStatus.COMPLETED:
            metric = trial.metrics.get_last_value
            entry.update(
                val_accuracy=[
                    metric(f"val_accuracy_gen_{k}") for k in range(1, entry["generations"] + 1)
                ],
                chosen_generation=int(metric("chosen_generation")),
                objective=metric(OBJECTIVE),
                epochs_trained=int(metric("epochs_trained")),
            )
        trials.append(entry)
    completed = [t for t in trials if "objective" in t]
    if not completed:
        raise RuntimeError(f"no trial of the search in {workdir} completed.")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = next(t for t in completed if t["trial_id"] == best_trial.trial_id)
    keys = chain_keys(config, best["chosen_generation"], best["temperature"], best["alpha"])
    classifier = runner.load(keys[-1])
    test = runner.experiment.trainer.evaluate(
        runner.experiment.test_ds, verbose=0, return_dict=True
    )
    weights, export = save_best_model(
        classifier, runner.cache.weights_path(keys[-1]), workdir, config, runner.experiment.splits
    )
    trained = runner.cache.trained()
    return {
        "dataset": config.dataset,
        "config": config.to_dict(),
        "search": hypermodel.search.to_dict(),
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
    classifier: keras.Model, cached: Path, workdir: Path, config: Config, splits: Splits
) -> tuple[Path, Path]:
    """The one place where the best model leaves the search, as a normal run's does.

    Keeps the chosen generation's weights as `best.weights.h5` and exports it as the
    next SavedModel version of `<export_dir>/<name>/` (so each completed or resumed
    search adds a version; none is ever overwritten).
    """
    path = workdir / "best.weights.h5"
    shutil.copyfile(cached, path)
    export = export_generation(classifier, splits.class_names, splits.image_shape, config)
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
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
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


def _is_hparams_callback(callback: keras.callbacks.Callback) -> bool:
    return type(callback).__module__.startswith("tensorboard.plugins.hparams")
