"""Fault injection for the durability tests: a crash, a signal or a full disk at a named point.

Off unless an environment variable names a point, so real runs never pay for it:

- `KREFINERY_KILL_AT=NAME`: the process SIGKILLs itself when it reaches point NAME,
  as `kill -9` would (no cleanup, no flushing). Points: `gen<k>.epoch<e>.batch<b>`
  (after that training batch; 1-based), `gen<k>.stored` (generation k is in the
  store, results not yet written), `gen<k>.relabelled` (the labels for generation
  k+1 are made, generation k+1 not started), `export` (the SavedModel and its manifest
  are written but not yet renamed into place).
- `KREFINERY_SIGNAL_AT=NAME:SIGNAL` (`SIGINT`, `SIGTERM`): the process sends itself
  SIGNAL, once, when it reaches point NAME (the points above), as Ctrl-C or a
  scheduler's stop would.
- `KREFINERY_ENOSPC_AT=TEXT`: the first atomic write to a path containing TEXT fails
  with ENOSPC, as on a full disk.
"""

from __future__ import annotations

import errno
import os
import signal

KILL_AT = "KREFINERY_KILL_AT"
ENOSPC_AT = "KREFINERY_ENOSPC_AT"
SIGNAL_AT = "KREFINERY_SIGNAL_AT"


def active() -> bool:
    return KILL_AT in os.environ or SIGNAL_AT in os.environ


def reached(point: str) -> None:
    """Dies at once if `point` is the one named by KREFINERY_KILL_AT; sends the signal
    KREFINERY_SIGNAL_AT names if it names `point`."""
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)
    target, _, name = os.environ.get(SIGNAL_AT, "").rpartition(":")
    if target == point:
        del os.environ[SIGNAL_AT]
        # Python runs the handler as os.kill returns: the stop is raised here.
        os.kill(os.getpid(), getattr(signal, name))


def before_write(path: os.PathLike | str) -> None:
    """Raises ENOSPC once for the first write to a path containing KREFINERY_ENOSPC_AT."""
    text = os.environ.get(ENOSPC_AT)
    if text and text in os.fspath(path):
        del os.environ[ENOSPC_AT]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
