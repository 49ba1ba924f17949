"""A run's `results.json` record, and the tables printed at the end of a run, search or study."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras

from krefinery import files
from krefinery.chain.runner import best_generation
from krefinery.config import Architecture, Config
from krefinery.data.feed import DataInfo
from krefinery.outputs import summaries, workdirs

RESULTS = workdirs.RUN.record


def read_results(folder: Path) -> dict[str, Any] | None:
    """`results.json` in `folder`, its checksum checked (and left out), or None if there
    is none; `Damaged` if it fails: it is rebuilt from the store, never trusted."""
    return files.read_sealed(Path(folder) / RESULTS)


def tensorboard_callback(workdir: Path, generation: int) -> keras.callbacks.Callback:
    """Per-epoch curves of one generation, as the sub-runs `gen_<k>/train` and
    `gen_<k>/validation` under the work directory."""
    return summaries.EpochSummaries(workdir / "tensorboard" / f"gen_{generation}")


def results_record(
    config: Config,
    info: DataInfo,
    generations: list[dict[str, Any]],
    workdir: Path,
    finished: bool,
    runtime: Mapping[str, Any],
    exports: Mapping[str, str],
) -> dict[str, Any]:
    """The `results.json` record; the best generation is chosen on validation accuracy.

    `diverged` is None, or the generation and epoch where the chain diverged. `finished`
    turns true only once every generation is trained and the best one exported.
    """
    diverged = next((g for g in generations if g.get("diverged")), None)
    return {
        "dataset": config.dataset,
        "config": config.to_dict(),
        "data": info.record(),
        "runtime": dict(runtime),
        "generations": generations,
        "best_generation": best_generation(generations),
        "diverged": None
        if diverged is None
        else {k: diverged[k] for k in ("generation", "epoch", "labels_not_finite") if k in diverged},
        "finished": finished,
        "exports": dict(exports),
        "workdir": os.fspath(workdir),
    }


def write_results(folder: Path, record: dict[str, Any]) -> Path:
    """`record` as `results.json`, sealed with the checksum `read_results` checks."""
    return files.write_sealed(Path(folder) / RESULTS, record)


def format_table(record: dict[str, Any]) -> str:
    """The per-generation summary printed at the end of a run."""
    header = ("gen", "val acc", "test acc", "label agree", "label entropy", "seconds")
    rows = []
    for g in record["generations"]:
        name = f"{g['generation']}" + ("*" if g["generation"] == record["best_generation"] else "")
        if g.get("diverged"):
            diverged = f"diverged in epoch {g['epoch']}"
            rows.append((name, diverged, "", "", "", f"{g['seconds']:.1f}"))
            continue
        # A refinery read from a file (`loaded`) trained on labels nobody here knows.
        labels = ("loaded", "-") if g.get("loaded") else (
            f"{g['train_label_agreement']:.4f}", f"{g['train_label_entropy']:.4f}"
        )
        rows.append((name, f"{g['val_accuracy']:.4f}", f"{g['test_accuracy']:.4f}", *labels, f"{g['seconds']:.1f}"))
    control = record.get("control")
    if control is not None and control.get("diverged"):
        diverged = f"diverged in epoch {control['epoch']}"
        rows.append(("control", diverged, "", "", "", f"{control['seconds']:.1f}"))
    elif control is not None:
        rows.append(
            (
                "control",
                f"{control['val_accuracy']:.4f}",
                f"{control['test_accuracy']:.4f}",
                f"{control['train_label_agreement']:.4f}",
                f"{control['train_label_entropy']:.4f}",
                f"{control['seconds']:.1f}",
            )
        )
    shown = [*record["generations"], control][: len(rows)]
    architectures = [g.get("architecture") for g in shown]
    models = [model_name(g) for g in shown]
    uniform = None in architectures or all(a == architectures[0] for a in architectures)
    if not uniform:
        # A refinery of its own shape: say which model each row is.
        header = (*header, "model")
        rows = [(*row, model) for row, model in zip(rows, models)]
    lines = table(header, rows)
    if uniform and models and models[0]:
        lines.append(f"model: {models[0]}")
    lines.append(f"* best generation on validation accuracy; results in {record['workdir']}/{RESULTS}")
    return "\n".join(lines)


def trainable_parameters(model: keras.Model) -> int:
    """What papers count as a network's parameters: its trainable weights' entries."""
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def model_name(generation: dict[str, Any]) -> str:
    """`ResNet-20 v1 (0.27M parameters)` of a results entry; the name alone for entries
    written before parameters were counted, and "" before architectures were."""
    if "architecture" not in generation:
        return ""
    name = Architecture(**generation["architecture"]).describe()
    if "parameters" not in generation:
        return name
    return f"{name} ({generation['parameters'] / 1e6:.2f}M parameters)"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a right-aligned text table under a ruled header: every table printed."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
