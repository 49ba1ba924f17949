"""What a run leaves behind: its work directory, `results.json`, TensorBoard logs, a table."""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

import keras

from krefinery import summaries
from krefinery.config import Config
from krefinery.errors import UserError
from krefinery.pipeline import Splits

RESULTS = "results.json"


def workdir_path(config: Config, prefix: str = "") -> Path:
    """`--workdir`, or else a new `runs/<prefix><dataset>-<time>`."""
    if config.workdir:
        return Path(config.workdir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.dataset.split(":")[0])
    return Path("runs") / f"{prefix}{name}-{stamp}"


def create_workdir(config: Config) -> Path:
    """`--workdir`, or a new `runs/<dataset>-<time>`; never one that already holds results.

    `results.json` is rewritten after every generation (`finished` turns true after
    the last), so even an interrupted run's folder holds work worth keeping.
    """
    workdir = workdir_path(config)
    if (workdir / RESULTS).exists():
        raise UserError(
            f"--workdir={workdir} already holds a run ({RESULTS}); choose another "
            "--workdir or remove that one."
        )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --workdir={workdir}: {error.strerror}.") from None
    return workdir


def tensorboard_callback(workdir: Path, generation: int) -> keras.callbacks.Callback:
    """Per-epoch curves of one generation, as the sub-run `gen_<k>` under the work directory
    (training and validation in that one sub-run, so a generation keeps one colour)."""
    return summaries.EpochSummaries(workdir / "tensorboard" / f"gen_{generation}")


def results_record(
    config: Config,
    splits: Splits,
    generations: list[dict[str, Any]],
    workdir: Path,
    finished: bool,
) -> dict[str, Any]:
    """The `results.json` record; the best generation is chosen on validation accuracy."""
    best = max(generations, key=lambda g: g["val_accuracy"])
    return {
        "dataset": config.dataset,
        "config": config.to_dict(),
        "data": {
            "num_train": splits.num_train,
            "num_val": splits.num_val,
            "num_test": splits.num_test,
            "num_classes": splits.num_classes,
            "class_names": list(splits.class_names),
            "image_shape": list(splits.image_shape),
        },
        "generations": generations,
        "best_generation": best["generation"],
        "finished": finished,
        "workdir": os.fspath(workdir),
    }


def write_results(workdir: Path, record: dict[str, Any]) -> Path:
    path = Path(workdir) / RESULTS
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def format_table(record: dict[str, Any]) -> str:
    """The per-generation summary printed at the end of a run."""
    header = ("gen", "val acc", "test acc", "label agree", "label entropy", "seconds")
    rows = [
        (
            f"{g['generation']}" + ("*" if g["generation"] == record["best_generation"] else ""),
            f"{g['val_accuracy']:.4f}",
            f"{g['test_accuracy']:.4f}",
            f"{g['train_label_agreement']:.4f}",
            f"{g['train_label_entropy']:.4f}",
            f"{g['seconds']:.1f}",
        )
        for g in record["generations"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"* best generation on validation accuracy; results in {record['workdir']}/{RESULTS}")
    return "\n".join(lines)
