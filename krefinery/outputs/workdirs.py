"""A work directory: claimed by one kind of command with one set of settings, and its records.

Runs, searches and studies all claim their folder here, by the same rules: a folder that
is a file, that holds another kind of work, or that holds the same kind with other
settings is refused with one line naming what differs; the same command on the same
folder resumes. Every record is read through `read_record`, so a damaged one is one
line too, never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from pathlib import Path
from typing import Any, Mapping

from krefinery import files
from krefinery.chain.store import DEFAULT_RUNTIME
from krefinery.config import Config, settings_of
from krefinery.errors import UserError


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of work a folder can hold: its marker (the settings a rerun must match),
    the record it leaves, the prefix of a default folder's name, and how to resume it."""

    name: str
    marker: str
    record: str
    prefix: str
    resume: str


RUN = Kind("run", "run.json", "results.json", "", "run it without --tune, --repeats or --control")
SEARCH = Kind("search", "search.json", "tuning.json", "tune-", "add --tune")
# A study keeps its settings in its record, which holds its config from the first repeat on.
STUDY = Kind("study", "study.json", "study.json", "study-", "pass the same --repeats and --control")
KINDS = (RUN, SEARCH, STUDY)


def check(config: Config, kind: Kind, marker: Mapping[str, Any]) -> Path | None:
    """`--workdir`, if it is new or holds `kind` with the settings in `marker` (to
    resume); None for a default work directory, made by `claim`. Reads only.

    `marker` is what `claim` writes: `{"config": Config.settings(), ...}`; every entry
    it shares with the stored marker must match.
    """
    if not config.workdir:
        return None
    workdir = Path(config.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir={workdir} is a file, not a folder; choose another --workdir.")
    for other in KINDS:
        if other != kind and any((workdir / name).exists() for name in (other.marker, other.record)):
            raise UserError(
                f"--workdir={workdir} holds a {other.name}, not a {kind.name}; {other.resume} "
                "to resume it, or choose another --workdir."
            )
    stored = read_record(workdir / kind.marker)
    if stored is None:
        if (workdir / kind.record).exists():
            raise UserError(
                f"--workdir={workdir} already holds a {kind.name} ({kind.record}) that cannot be "
                "resumed; choose another --workdir."
            )
        return workdir
    # A setting the record predates had its default then.
    then = {**Config().to_dict(), **stored.get("config", {})}
    changed = differences(settings_of(then), settings_of(dict(marker["config"])))
    for name, value in marker.items():
        if name not in ("config", "runtime") and _as_read(value) != stored.get(name):
            changed.append(f"the {name} settings differ ({workdir / kind.marker})")
    if changed:
        raise UserError(
            f"--workdir={workdir} already holds a {kind.name} with other settings ("
            + "; ".join(changed)
            + "); rerun with the same flags to resume it, or choose another --workdir."
        )
    return workdir


def check_runtime(workdir: Path, runtime: Mapping[str, Any]) -> None:
    """A run resumes only with the precision, XLA, determinism and replicas it was trained with."""
    stored = read_record(workdir / RUN.marker)
    if stored is None:
        return
    # A run from before --distribute and --input existed trained on one device, by tf.data.
    trained = {**dict(DEFAULT_RUNTIME), **stored.get("runtime", {})}
    changed = differences(trained, dict(runtime))
    if changed:
        raise UserError(
            f"--workdir={workdir} holds a run trained with other numerics than this machine "
            "resolves to (" + "; ".join(changed) + "); pass --precision, --[no]jit_compile "
            "and --distribute as the run had them to resume it here, or choose another --workdir."
        )


def claim(config: Config, kind: Kind, workdir: Path | None, marker: Mapping[str, Any] | None) -> Path:
    """Makes `workdir` (a new default `runs/<prefix><dataset>-<time>` if None) and writes
    `kind`'s marker there once, unless `marker` is None (a study writes its record)."""
    if workdir is None:
        workdir = _create_default(config, kind.prefix)
    else:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --workdir={workdir}: {error.strerror}.") from None
    if marker is not None and not (workdir / kind.marker).exists():
        files.write_json(workdir / kind.marker, dict(marker))
    return workdir


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON record at `path`, or None if there is none; one that cannot be read is a
    `UserError` naming it."""
    try:
        record = files.read_json(path)
    except (OSError, ValueError):
        raise UserError(f"{path} cannot be read; choose another --workdir.") from None
    if record is not None and not isinstance(record, dict):
        raise UserError(f"{path} is not a krefinery record; choose another --workdir.")
    return record


def write_record(path: Path, record: Mapping[str, Any]) -> Path:
    """`record` as JSON at `path`, landing whole or not at all."""
    return files.write_json(path, dict(record))


def keep_weights(stored: Path, path: Path) -> Path:
    """A stored generation's weights file kept in the work directory as `path` (a hard
    link where the disk allows, else a copy)."""
    return files.link_or_copy(stored, path)


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`--name=<stored> there, --name=<current> here` for every setting that differs."""
    names = sorted(set(stored) | set(current))
    return [
        f"--{name}={_flag(stored.get(name))} there, --{name}={_flag(current.get(name))} here"
        for name in names
        if stored.get(name) != current.get(name)
    ]


def _create_default(config: Config, prefix: str) -> Path:
    """A new folder `runs/<prefix><dataset>-<time>[-<n>]`, made exclusively: two runs
    started in the same second get two folders."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.dataset.split(":")[0])
    base = Path("runs") / f"{prefix}{name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free name for a work directory beside {base}.")


def _as_read(value: Any) -> Any:
    return json.loads(json.dumps(value))  # Tuples as lists, as a record reads them back.


def _flag(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
