"""A study: the same chain repeated with new training seeds, with a control, and a verdict.

One chain cannot tell a refinement gain from noise: two seeds of generation 1 alone
differ by as much as refinement gains. `run_study` trains `--repeats` chains, repeat r
with training seed `seed + r` (initial weights, shuffling, augmentation) on the splits
of `seed` (Config.split_seed), so every comparison is paired repeat by repeat; with
`--control`, each repeat's run also trains generation 2's twin on the ground truth
(generation 2 of the chain at alpha = 1, `refinery.train_and_evaluate`).
`krefinery.study_report` turns the repeats into the figures.

Work directory (`--workdir`, default `runs/study-<dataset>-<time>`):

    study.json              per-generation mean/sd/interval, paired comparisons, verdicts
    study.png               each repeat's chain thin, the mean with its interval thick
    tensorboard/study/      the same figures as scalars, and the table as text
    repeat_<r>/             a whole run of seed + r: results.json (with "control"),
                            gen_<k>.weights.h5, control.weights.h5, tensorboard/,
                            generations/ (its store), saved_models/ (its best generation)

Each repeat is a normal run, so a study resumes as a run does: the same command on the
same `--workdir` continues the repeat in flight and loads the finished ones.

Export: each repeat exports its own best generation into its folder, and the study
exports one model to `--export_dir`: the best chain generation of all repeats by
validation accuracy (never the control, which exists to measure).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from krefinery import files, refinery, reporting, study_report
from krefinery.config import Config
from krefinery.errors import UserError
from krefinery.pipeline import load_splits
from krefinery.export import (
    SOURCE_FILE,
    default_export_name,
    find_export,
    land_version,
    prepare_export_dir,
)

REPEAT_DIR = "repeat_{}"


def repeat_config(config: Config, repeat: int, root: Path) -> Config:
    """Repeat `repeat`'s own run: training seed `seed + repeat`, the study's splits."""
    folder = root / REPEAT_DIR.format(repeat)
    return dataclasses.replace(
        config,
        seed=config.seed + repeat,
        split_seed=config.resolved_split_seed,
        repeats=1,
        workdir=os.fspath(folder),
        export_dir=os.fspath(folder / "saved_models"),
    )


def study_workdir(config: Config) -> Path:
    """`--workdir` (new, or holding this study to resume) or a new `runs/study-<dataset>-<time>`.

    A folder holding a run, a search, or a study with other settings is refused.
    """
    if not config.workdir:
        return reporting.create_default_workdir(config, prefix="study-")
    root = Path(config.workdir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--workdir={root} is a file, not a folder; choose another --workdir.")
    taken = [p for p in (reporting.RESULTS, reporting.SETTINGS, reporting.SEARCH) if (root / p).exists()]
    if taken:
        raise UserError(
            f"--workdir={root} already holds a run or search ({taken[0]}), not a study; "
            "choose another --workdir."
        )
    stored = files.read_json(root / study_report.STUDY) if (root / study_report.STUDY).exists() else None
    if stored is not None:
        differences = reporting.differences(
            reporting.settings(Config(**_config_fields(stored["config"]))), reporting.settings(config)
        )
        if differences:
            raise UserError(
                f"--workdir={root} already holds a study with other settings ("
                + "; ".join(differences)
                + "); rerun with the same flags to resume it, or choose another --workdir."
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --workdir={root}: {error.strerror}.") from None
    return root


def _config_fields(stored: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(Config)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in fields}


def run_study(config: Config) -> dict[str, Any]:
    """Trains (or resumes) the repeats and controls that `config` asks for; returns the
    study record. `study.json` is rewritten after every repeat, so an interrupted study
    keeps what it finished. Bad input is reported before anything is trained or written.
    """
    prepare_export_dir(config)
    load_splits(config)  # Bad data or batch size fails here, before the folder is made.
    root = study_workdir(config)
    runs: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    for repeat in range(config.repeats):
        own = repeat_config(config, repeat, root)
        if config.verbose:
            print(f"Repeat {repeat + 1}/{config.repeats} (seed {own.seed})", flush=True)
        results = refinery.train_and_evaluate(own)
        runs.append(results)
        if config.verbose:
            print(reporting.format_table(results), flush=True)
        record = study_report.study_record(config, runs, root)
        files.write_json(root / study_report.STUDY, record)
    study_report.study_chart(record, runs, root / study_report.CHART)
    study_report.write_tensorboard(record, root / "tensorboard" / "study")
    best = runs[record["best"]["repeat"]]
    record["export"] = os.fspath(copy_export(Path(best["exports"]["best"]), config))
    files.write_json(root / study_report.STUDY, record)
    return record


def copy_export(version_dir: Path, config: Config) -> Path:
    """A copy of an exported version as the next version of `<export_dir>/<name>`, once:
    a copy that landed before (same `assets.extra` source marker) is returned instead.

    Copied into a hidden temporary folder and renamed into place, as `export` does, so a
    server watching the folder never sees half a model.
    """
    model_dir = Path(config.export_dir) / (config.export_name or default_export_name(config.dataset))
    source = files.read_json(version_dir / "assets.extra" / SOURCE_FILE)
    landed = find_export(model_dir, source) if source is not None and model_dir.is_dir() else None
    if landed is not None:
        return landed
    model_dir.mkdir(parents=True, exist_ok=True)
    return land_version(model_dir, lambda temp: shutil.copytree(version_dir, temp))
