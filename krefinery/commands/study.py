"""A study: the same chain repeated with new training seeds, with a control, and a verdict.

One chain cannot tell a refinement gain from noise: two seeds of generation 1 alone
differ by as much as refinement gains. `run_study` trains `--repeats` chains, repeat r
with training seed `seed + r` (initial weights, shuffling, augmentation) on the splits
of `seed` (Config.split_seed), so every comparison is paired repeat by repeat; with
`--control`, each repeat's run also trains generation 2's twin on the ground truth
(generation 2 of the chain at alpha = 1, `train.train_and_evaluate`).
`krefinery.outputs.study_report` turns the repeats into the figures.

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
from pathlib import Path
from typing import Any

from krefinery.chain.experiment import check_data
from krefinery.commands import train
from krefinery.config import Config
from krefinery.errors import Interrupted
from krefinery.outputs import export, report, study_report, workdirs
from krefinery.runtime.hosts import ALONE, Hosts

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


def run_study(config: Config, hosts: Hosts = ALONE) -> dict[str, Any]:
    """Trains (or resumes) the repeats and controls that `config` asks for; returns the
    study record. `study.json` is rewritten after every repeat, so an interrupted study
    keeps what it finished. Bad input is reported before anything is trained or written.
    `hosts`: the processes of a study on several (each repeat a run across them all;
    process 0 alone writes, as in `train.train_and_evaluate`).
    """
    if hosts.several:
        workdirs.check_alike(config, hosts)
    root = workdirs.check(config, workdirs.STUDY, workdirs.marker_of(config))
    with workdirs.claim(config, workdirs.STUDY, root, hosts=hosts) as held:
        hosts.on_writer(lambda: export.prepare_export_dir(config))
        check_data(config)  # Bad data or batch size fails here, before anything is written.
        # The study's record is its marker: its settings now, its figures after each repeat.
        held.mark({**workdirs.marker_of(config), "config": config.to_dict()})
        return _study(config, held.path, hosts)


def _study(config: Config, root: Path, hosts: Hosts) -> dict[str, Any]:
    """The repeats in `root`, then the study's record, chart and export (process 0's)."""
    runs: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    for repeat in range(config.repeats):
        own = repeat_config(config, repeat, root)
        if config.verbose:
            print(f"Repeat {repeat + 1}/{config.repeats} (seed {own.seed})", flush=True)
        try:
            results = train.train_and_evaluate(own, hosts)
        except Interrupted as stop:
            raise stop.within(f"repeat {repeat + 1} of {config.repeats}")
        runs.append(results)
        if config.verbose:
            print(report.format_table(results), flush=True)
        record = study_report.study_record(config, runs, root)
        if hosts.writer:
            workdirs.write_record(root / study_report.STUDY, record)
    if hosts.writer:
        study_report.study_chart(record, runs, root / study_report.CHART)
        study_report.write_tensorboard(record, runs, root / "tensorboard" / "study")
        best = runs[record["best"]["repeat"]]
        record["export"] = os.fspath(export.copy_export(Path(best["exports"]["best"]), config))
        workdirs.write_record(root / study_report.STUDY, record)
    hosts.barrier("study finished")
    return record
