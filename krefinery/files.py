"""Writes that land whole or not at all: a temporary file beside the target, then a rename.

A kill mid-write leaves the old file (or none) in place, never a truncated one. A full
disk becomes one `DiskFull` error naming the path, with the temporary file removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

from krefinery import faults
from krefinery.errors import DiskFull

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_MARK = ".tmp-"


def atomic_write(path: os.PathLike | str, write: Callable[[Path], None]) -> Path:
    """Calls `write(temporary)`, then renames the temporary file to `path`.

    The temporary name keeps `path`'s suffixes (Keras wants `.weights.h5`).
    """
    path = Path(path)
    temporary = path.with_name(f"{temporary_prefix()}{os.getpid()}-{path.name}")
    try:
        faults.before_write(path)
        _remove(temporary)  # Left by an earlier write of this process that was interrupted.
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        if is_no_space(error):
            raise DiskFull(path) from None
        raise
    except BaseException:
        _remove(temporary)
        raise
    return path


def write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def write_json(path: os.PathLike | str, record: Any) -> Path:
    return write_text(path, json.dumps(record, indent=2) + "\n")


def read_json(path: os.PathLike | str) -> Any | None:
    """The record at `path`, or None if there is none."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def link_or_copy(source: Path, target: Path) -> Path:
    """`target` as a hard link to `source` (no extra space), else an atomic copy."""
    if target.exists() and os.path.samefile(source, target):
        return target  # (Renaming a link over its twin would leave the temporary behind.)

    def place(temporary: Path) -> None:
        try:
            os.link(source, temporary)
        except OSError as error:
            if is_no_space(error):
                raise
            shutil.copyfile(source, temporary)

    return atomic_write(target, place)


def temporary_prefix() -> str:
    """`.tmp-<host>.`: temporaries name their host and process, so that cleaning up
    never touches a live process's files, here or on another host sharing the folder."""
    return f"{TEMP_MARK}{socket.gethostname()}."


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporaries in `folder` whose process (on this host) is gone: killed mid-write."""
    prefix = temporary_prefix()
    stale = []
    for path in folder.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.append(path)
    return stale


def remove_stale_temporaries(folder: Path) -> None:
    for path in stale_temporaries(folder):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_full(error: BaseException) -> DiskFull | None:
    """`error` as `DiskFull` if it says the disk is full, whatever raised it: an OSError,
    or TensorFlow's `ResourceExhaustedError` (`<path>; No space left on device`), as
    its writers (SavedModel, TensorBoard) report it; else None."""
    if isinstance(error, DiskFull):
        return error
    if isinstance(error, OSError) and is_no_space(error):
        return DiskFull(error.filename or error)
    text = str(getattr(error, "message", None) or error)
    if type(error).__name__ == "ResourceExhaustedError" and (
        "No space left" in text or "quota exceeded" in text
    ):
        return DiskFull(text.split("; ")[0] if "; " in text else text)
    return None


def is_no_space(error: OSError) -> bool:
    """Whether `error` says the disk is full (ENOSPC) or a quota is reached (EDQUOT)."""
    # h5py reports a full disk as an OSError whose text carries the errno.
    return error.errno in _NO_SPACE or "No space left" in str(error) or "errno = 28" in str(error)


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
