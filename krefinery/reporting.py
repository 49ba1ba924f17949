"""A run's work directory (claiming it, resuming it), `results.json` and the printed table."""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import keras

from krefinery import files, summaries
from krefinery.config import Architecture, Config
from krefinery.errors import UserError
from krefinery.pipeline import Splits

RESULTS = "results.json"
# What the run was started with: a rerun with the same settings resumes it.
SETTINGS = "run.json"
SEARCH = "search.json"
# Where outputs go and how much is printed, not what is trained: a resumed run may change these.
NOT_SETTINGS = ("workdir", "verbose", "export_dir", "export_name", "export_all_generations")


def create_default_workdir(config: Config, prefix: str = "") -> Path:
    """A new folder `runs/<prefix><dataset>-<time>[-<n>]`, made exclusively: two runs
    started in the same second get two folders."""
    base = _default_workdir(config, prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free name for a work directory beside {base}.")


def _default_workdir(config: Config, prefix: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.dataset.split(":")[0])
    return Path("runs") / f"{prefix}{name}-{stamp}"


def settings(config: Config) -> dict[str, Any]:
    """The Config fields a resumed run must share with the run it continues."""
    values = {k: v for k, v in config.to_dict().items() if k not in NOT_SETTINGS}
    return json.loads(json.dumps(values))  # Tuples as lists, as they are read back.


def check_workdir(config: Config) -> Path | None:
    """`--workdir` if it is new or holds a run with these settings (to resume); None
    for a default work directory (made later). Reads only: nothing is created here.

    A folder holding a search, a `results.json` of no resumable run, or a run with other
    settings is refused, naming the flags that differ.
    """
    if not config.workdir:
        return None
    workdir = Path(config.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir={workdir} is a file, not a folder; choose another --workdir.")
    if (workdir / SEARCH).exists():
        raise UserError(
            f"--workdir={workdir} holds a tuning search; add --tune to resume it, or choose "
            "another --workdir."
        )
    stored = _read_record(workdir / SETTINGS)
    if stored is None:
        if (workdir / RESULTS).exists():
            raise UserError(
                f"--workdir={workdir} already holds a run ({RESULTS}) that cannot be resumed; "
                "choose another --workdir."
            )
        return workdir
    changed = differences(stored.get("config", {}), settings(config))
    if changed:
        raise UserError(
            f"--workdir={workdir} already holds a run with other settings ("
            + "; ".join(changed)
            + "); rerun with the same flags to resume it, or choose another --workdir."
        )
    return workdir


def check_runtime(workdir: Path, runtime: Mapping[str, Any]) -> None:
    """A run resumes only with the precision, XLA, determinism and replicas it was trained with."""
    stored = _read_record(workdir / SETTINGS)
    if stored is None:
        return
    # A run from before --distribute existed trained on one device.
    trained = {"distribute": "none", "replicas": 1, **stored.get("runtime", {})}
    changed = differences(trained, dict(runtime))
    if changed:
        raise UserError(
            f"--workdir={workdir} holds a run trained with other numerics than this machine "
            "resolves to (" + "; ".join(changed) + "); pass --precision, --[no]jit_compile "
            "and --distribute as the run had them to resume it here, or choose another --workdir."
        )


def create_workdir(config: Config, runtime: Mapping[str, Any], workdir: Path | None) -> Path:
    """Makes a run's work directory and records the settings and runtime that a rerun
    must match to resume it."""
    record = {"config": settings(config), "runtime": dict(runtime)}
    return claim_workdir(config, workdir, SETTINGS, record)


def claim_workdir(
    config: Config, workdir: Path | None, record_name: str, record: Mapping[str, Any], prefix: str = ""
) -> Path:
    """Makes `workdir` (a new default `runs/<prefix><dataset>-<time>` if None) and writes
    `record_name` there once: what a rerun must match to resume (a run's or a search's)."""
    if workdir is None:
        workdir = create_default_workdir(config, prefix=prefix)
    else:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --workdir={workdir}: {error.strerror}.") from None
    if not (workdir / record_name).exists():
        files.write_json(workdir / record_name, dict(record))
    return workdir


def read_results(workdir: Path) -> dict[str, Any] | None:
    return _read_record(Path(workdir) / RESULTS)


def tensorboard_callback(workdir: Path, generation: int) -> keras.callbacks.Callback:
    """Per-epoch curves of one generation, as the sub-run `gen_<k>` under the work directory
    (training and validation in that one sub-run, so a generation keeps one colour)."""
    return summaries.EpochSummaries(workdir / "tensorboard" / f"gen_{generation}")


def best_generation(generations: list[dict[str, Any]]) -> int | None:
    """The generation with the highest validation accuracy (the first of ties); a
    diverged generation never counts."""
    finished = [g for g in generations if not g.get("diverged")]
    if not finished:
        return None
    return max(finished, key=lambda g: g["val_accuracy"])["generation"]


def results_record(
    config: Config,
    splits: Splits,
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
        "data": {
            "num_train": splits.num_train,
            "num_val": splits.num_val,
            "num_test": splits.num_test,
            "num_classes": splits.num_classes,
            "class_names": list(splits.class_names),
            "image_shape": list(splits.image_shape),
            **splits.notes,
        },
        "runtime": dict(runtime),
        "generations": generations,
        "best_generation": best_generation(generations),
        "diverged": None
        if diverged is None
        else {"generation": diverged["generation"], "epoch": diverged["epoch"]},
        "finished": finished,
        "exports": dict(exports),
        "workdir": os.fspath(workdir),
    }


def write_results(workdir: Path, record: dict[str, Any]) -> Path:
    return files.write_json(Path(workdir) / RESULTS, record)


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
        rows.append(
            (
                name,
                f"{g['val_accuracy']:.4f}",
                f"{g['test_accuracy']:.4f}",
                f"{g['train_label_agreement']:.4f}",
                f"{g['train_label_entropy']:.4f}",
                f"{g['seconds']:.1f}",
            )
        )
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
    if None not in architectures and any(a != architectures[0] for a in architectures):
        # A refinery of its own shape: say which model each row is.
        header = (*header, "model")
        rows = [(*row, Architecture(**a).describe()) for row, a in zip(rows, architectures)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"* best generation on validation accuracy; results in {record['workdir']}/{RESULTS}")
    return "\n".join(lines)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = files.read_json(path)
    except (OSError, ValueError):
        raise UserError(f"{path} cannot be read; choose another --workdir.") from None
    if record is not None and not isinstance(record, dict):
        raise UserError(f"{path} is not a krefinery record; choose another --workdir.")
    return record


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`--name=<stored> there, --name=<current> here` for every setting that differs."""
    names = sorted(set(stored) | set(current))
    return [
        f"--{name}={_flag(stored.get(name))} there, --{name}={_flag(current.get(name))} here"
        for name in names
        if stored.get(name) != current.get(name)
    ]


def _flag(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
