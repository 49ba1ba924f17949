"""A work directory: claimed by one kind of command with one set of settings, and its records.

Runs, searches and studies all claim their folder here, by the same rules: a folder that
is a file, that holds another kind of work, or that holds the same kind with other
settings is refused with one line naming what differs; the same command on the same
folder resumes. Every record is read through `read_record`, so a damaged one is one
line too, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator, Mapping

from krefinery import files
from krefinery.chain import refinery_model
from krefinery.chain.store import DEFAULT_RUNTIME
from krefinery.config import Config, settings_of
from krefinery.errors import UserError
from krefinery.runtime.hosts import ALONE, WORKDIR_NEEDED, Hosts


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
# A study's record is its marker: its settings from the start, its figures after each repeat.
STUDY = Kind("study", "study.json", "study.json", "study-", "pass the same --repeats and --control")
KINDS = (RUN, SEARCH, STUDY)
# Held by the one process at work in a folder (`claim`); it says which process that is.
LOCK = "krefinery.lock"
# Written by process 0 of a run on several hosts as it claims the folder, and read by
# every process to check that they share it (`claim`); removed once read.
HOSTS_TOKEN = "hosts.token"


# A marker's entry for the content of `--refinery_model`'s file: its path is in the config,
# and a file changed in place is another refinery, so not the same run to resume.
REFINERY_CONTENT = "refinery_model_sha256"


def marker_of(config: Config, **entries: Any) -> dict[str, Any]:
    """What a command's work directory is marked with: its settings, the content of its
    refinery file if it has one, and `entries`."""
    marker = {"config": config.settings(), **entries}
    if config.refinery_model is not None:
        marker[REFINERY_CONTENT] = refinery_model.digest(config.refinery_model)
    return marker


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
        if name == REFINERY_CONTENT and value != stored.get(name):
            changed.append(f"the file --refinery_model={config.refinery_model} names has changed")
        elif name not in ("config", "runtime") and _as_read(value) != stored.get(name):
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
    # A run from before these were recorded trained on TensorFlow, one device, by tf.data.
    trained = {**dict(DEFAULT_RUNTIME), **stored.get("runtime", {})}
    if trained["backend"] != runtime["backend"]:
        # Each backend resolves its own numerics (JAX always compiles with XLA, say), so
        # no flag makes one resume another's run: only the backend it was trained on.
        raise UserError(
            f"--workdir={workdir} holds a run trained with KERAS_BACKEND={trained['backend']}; "
            f"resume it with that backend (here: {runtime['backend']}), or choose another --workdir."
        )
    changed = differences(trained, dict(runtime))
    if changed:
        raise UserError(
            f"--workdir={workdir} holds a run trained with other numerics than this machine "
            "resolves to (" + "; ".join(changed) + "); pass --precision, --[no]jit_compile "
            "and --distribute as the run had them to resume it here, or choose another --workdir."
        )


class Claim:
    """A work directory held by this process (see `claim`); `mark` records whose it is."""

    def __init__(self, path: Path, kind: Kind, config: Config, hosts: Hosts = ALONE):
        self.path, self.kind, self._config, self._hosts = path, kind, config, hosts
        self.marked = (path / kind.marker).exists()

    def mark(self, marker: Mapping[str, Any]) -> None:
        """Checks `marker` against the folder's, now that no other process can change it,
        and writes it if the folder has none: from then on the folder is this work's."""
        check(dataclasses.replace(self._config, workdir=os.fspath(self.path)), self.kind, marker)
        if self._hosts.writer and not (self.path / self.kind.marker).exists():
            files.write_json(self.path / self.kind.marker, dict(marker))
        self._hosts.barrier("marked")
        self.marked = True


@contextlib.contextmanager
def claim(
    config: Config, kind: Kind, workdir: Path | None, exclusive: bool = True, hosts: Hosts = ALONE
) -> Iterator[Claim]:
    """Holds `workdir` (a new default `runs/<prefix><dataset>-<time>` if None) for this
    process while the `with` block runs.

    Held means an exclusive lock on `LOCK` in the folder, taken before any data is
    read: a second process that claims it is refused at once with one line naming the
    holder, on this host or another that shares the folder where the file system's
    locks reach it. The lock goes with its process, so a killed run leaves nothing to
    clear: the next claim takes it. A command that ends before it `mark`s the folder
    (refused, say) leaves it as it found it: the folders it made are removed.
    `exclusive=False` (the processes of one distributed search) shares the folder.

    Of the processes of one run on several hosts (`hosts`), process 0 claims the folder
    for them all; the others wait for it, then check that they see the folder it
    claimed (`check_shared`): a work directory the hosts do not share is refused on all.
    """
    if hosts.several:
        with _claimed_by_writer(config, kind, workdir, hosts) as held:
            yield held
        return
    with _claim_folder(config, kind, workdir, exclusive, hosts) as held:
        yield held


@contextlib.contextmanager
def _claim_folder(config: Config, kind: Kind, workdir: Path | None, exclusive: bool, hosts: Hosts) -> Iterator[Claim]:
    """`claim` by this process: for itself, or for the processes of `hosts`."""
    # The folders this claim makes (the work directory and any missing parents), deepest
    # first: what a command that ends before it marks its folder takes away again.
    target = workdir if workdir is not None else _default_path(config, kind.prefix)
    made = [folder for folder in target.parents if not folder.exists()]
    if workdir is None:
        workdir = _create_default(target)  # Always new: `target`, or `target-<n>`.
        made.insert(0, workdir)
    else:
        if not workdir.exists():
            made.insert(0, workdir)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --workdir={workdir}: {error.strerror}.") from None
    held = Claim(workdir, kind, config, hosts)
    lock = workdir / LOCK
    had_lock = lock.exists()
    with contextlib.ExitStack() as stack:
        if exclusive:
            stack.enter_context(_locked(lock, workdir))
        try:
            yield held
        except BaseException:  # Refused, failed or stopped before it was this work's.
            if not held.marked:
                _unmake(made, lock if exclusive and not had_lock else None)
            raise


@contextlib.contextmanager
def _claimed_by_writer(config: Config, kind: Kind, workdir: Path | None, hosts: Hosts) -> Iterator[Claim]:
    """`claim` for the processes of one run: process 0 claims `workdir` (named: a default
    one would differ by host) and writes a token with a fresh nonce into it; every
    process reads the token where its `--workdir` points, and all must read the same."""
    if workdir is None:
        raise UserError(WORKDIR_NEEDED)
    token = workdir / HOSTS_TOKEN
    with contextlib.ExitStack() as stack:

        def take() -> Claim:
            held = stack.enter_context(_claim_folder(config, kind, workdir, True, hosts))
            files.write_text(token, f"{os.urandom(16).hex()} {socket.gethostname()}\n")
            return held

        held = hosts.on_writer(take)
        try:
            seen = token.read_text()
        except OSError:
            seen = ""
        try:
            apart = hosts.differing({"token": seen}).get("token")
        finally:
            hosts.barrier("token read")
            if hosts.writer:
                token.unlink(missing_ok=True)
        if apart:
            raise UserError(
                f"process{_plural(apart)} {_listed(apart)} of {hosts.count} cannot see the work "
                f"directory process 0 claimed (--workdir={workdir} here): every host must see the "
                "same folder, on storage they share."
            )
        yield held if hosts.writer else Claim(workdir, kind, config, hosts)


def check_alike(config: Config, hosts: Hosts) -> None:
    """Refuses, on every process, a run whose processes were started with other settings
    or another version of krefinery than process 0; the line names the flags."""
    settings = config.settings()
    values = {f"--{name}": json.dumps(value) for name, value in sorted(settings.items())}
    differ = hosts.differing({**values, CODE: _code_digest()})
    code = differ.pop(CODE, None)
    if code:
        raise UserError(
            f"process{_plural(code)} {_listed(code)} of {hosts.count} run another version of "
            "krefinery than process 0: install the same version on every host."
        )
    if differ:
        processes = sorted({i for found in differ.values() for i in found})
        raise UserError(
            f"process{_plural(processes)} {_listed(processes)} of {hosts.count} started with "
            f"other flags than process 0 ({', '.join(differ)}): start the same command on every host."
        )


# `check_alike`'s name for the digest of krefinery's code.
CODE = "code"


def _plural(processes: list[int]) -> str:
    return "es" if len(processes) > 1 else ""


def _listed(processes: list[int]) -> str:
    return ", ".join(map(str, processes))


def _code_digest() -> str:
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _unmake(made: list[Path], lock: Path | None) -> None:
    """Takes away what a claim made (the lock file, then the folders, deepest first),
    where nothing else has been put there since."""
    if lock is not None:
        lock.unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _locked(lock: Path, workdir: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on `lock`, whose text names its holder."""
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"--workdir={workdir} is in use by {holder}; wait for it to finish (the same "
                "command then resumes or reprints it), or choose another --workdir."
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            started = datetime.datetime.now().isoformat(timespec="seconds")
            handle.write(f"process {os.getpid()} on {socket.gethostname()} (since {started})\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _default_path(config: Config, prefix: str) -> Path:
    """`runs/<prefix><dataset>-<time>`: where a default work directory goes."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.dataset.split(":")[0])
    return Path("runs") / f"{prefix}{name}-{stamp}"


def _create_default(base: Path) -> Path:
    """`base`, or `base-<n>` if it is taken, made exclusively: two runs started in the same
    second get two folders."""
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
