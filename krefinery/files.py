"""Writes that land whole or not at all, and reads that are checked.

A write goes to a temporary file beside the target, then a rename: a kill mid-write
leaves the old file (or none) in place, never a truncated one. A full disk becomes one
`DiskFull` error naming the path, with the temporary file removed.

A rename guards against a kill, not against what happens to a file afterwards (a disk
error, a copy cut short, an edit by hand). So what is read back to go on from is
checked here, in one place: a record is sealed with the SHA-256 of its content
(`seal`, `unseal`), and a file it names is recorded by name, size and SHA-256
(`file_entry`) and checked before use (`checked_file`). Whatever fails is `Damaged`,
which says what was wrong; the reader decides what to do without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from krefinery import faults
from krefinery.errors import Damaged, DiskFull

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_MARK = ".tmp-"
# The key of a sealed record that holds the SHA-256 of the rest of it.
CHECKSUM = "checksum"


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


@contextlib.contextmanager
def exclusive(lock: os.PathLike | str) -> Iterator[None]:
    """Held by one process at a time (an advisory lock on the file `lock`); the others wait."""
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def read_record(path: os.PathLike | str) -> dict[str, Any] | None:
    """The JSON object at `path`, or None if there is none; `Damaged` if it cannot be
    read, is not JSON (cut short, zeroed) or is not an object."""
    try:
        text = Path(path).read_bytes().decode()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise Damaged(path, f"cannot be read ({getattr(error, 'strerror', None) or 'not text'})") from None
    try:
        record = json.loads(text)
    except ValueError:
        raise Damaged(path, "is not valid JSON (cut short or overwritten)") from None
    if not isinstance(record, dict):
        raise Damaged(path, "is not a krefinery record")
    return record


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with `CHECKSUM`, the SHA-256 of its content: an edited figure shows."""
    content = {k: v for k, v in record.items() if k != CHECKSUM}
    return {**content, CHECKSUM: _record_digest(content)}


def unseal(path: os.PathLike | str, record: dict[str, Any]) -> dict[str, Any]:
    """The content of `record`, read from `path`, once its checksum matches; `Damaged`
    if it has none or another."""
    content = {k: v for k, v in record.items() if k != CHECKSUM}
    if CHECKSUM not in record:
        raise Damaged(path, "has no checksum")
    if record[CHECKSUM] != _record_digest(content):
        raise Damaged(path, "does not match its checksum (edited or corrupted)")
    return content


def write_sealed(path: os.PathLike | str, record: dict[str, Any]) -> Path:
    """`record`, sealed, written by rename: what `read_sealed` reads back."""
    return write_json(path, seal(record))


def read_sealed(path: os.PathLike | str) -> dict[str, Any] | None:
    """The sealed record at `path`, checked, without its checksum; None if there is
    none; `Damaged` if it fails a check."""
    record = read_record(path)
    return None if record is None else unseal(path, record)


def file_entry(path: os.PathLike | str) -> dict[str, Any]:
    """How a record names a file it goes with: `{"name", "size", "sha256"}`."""
    path = Path(path)
    size, sha256 = _file_digest(path)
    return {"name": path.name, "size": size, "sha256": sha256}


def checked_file(folder: os.PathLike | str, entry: Any, named_by: os.PathLike | str) -> Path:
    """The file in `folder` that `entry` (a `file_entry`, read from the record
    `named_by`) names, once it is there with the recorded size and SHA-256; `Damaged`
    naming what is wrong. The name must be a plain file name that stays in `folder`
    when resolved: a record never leads elsewhere."""
    folder = Path(folder)
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not _plain_name(name):
        raise Damaged(named_by, f"names {name!r}, not a file in {folder}")
    path = folder / name
    if path.resolve().parent != folder.resolve():  # A link to elsewhere.
        raise Damaged(path, f"leads outside {folder}")
    try:
        size, sha256 = _file_digest(path)
    except FileNotFoundError:
        raise Damaged(path, "is missing") from None
    except OSError as error:
        raise Damaged(path, f"cannot be read ({error.strerror})") from None
    if size != entry.get("size"):
        raise Damaged(path, f"has {size} bytes where {entry.get('size')} were written")
    if sha256 != entry.get("sha256"):
        raise Damaged(path, "does not match its recorded SHA-256 (corrupted or replaced)")
    return path


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


def _record_digest(content: dict[str, Any]) -> str:
    # Canonical JSON: the same content gives the same text, read back or not.
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _plain_name(name: str) -> bool:
    separators = {"/", os.sep, os.altsep or "/", "\\", "\0"}
    return name not in ("", ".", "..") and not any(s in name for s in separators)


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
