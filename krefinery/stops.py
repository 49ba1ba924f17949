"""Clean stops on SIGINT and SIGTERM: the signal becomes an `Interrupted` exception.

`run.py` installs the handlers for the length of a command (`on_signals`); library code
only calls `check()` at safe points, which does nothing unless a stop is pending.

The handler raises `Interrupted` in whatever Python code the main thread is running.
Most of the time that is the training loop, an export or a write, and the exception
unwinds through their cleanup (`files.atomic_write`, `export.land_version`), which
leaves nothing half-written. But Python ignores an exception raised inside a
`__del__` or a weakref callback (TensorFlow runs many as it frees graphs), so the stop
stays *pending* until it reaches the top: `check()`, called after every training batch,
between generations and before an export is renamed into place, raises it again, and
such a swallowed raise is not printed as "Exception ignored". A second signal while the
first one's stop unwinds ends the process at once, as the signal would without a
handler (the next run removes what that leaves, as after `kill -9`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from krefinery.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The signal received and not yet reported, if any.
_pending: int | None = None


def pending() -> int | None:
    """The number of the signal whose stop has not reached the top yet, if any."""
    return _pending


def check() -> None:
    """Raises `Interrupted` if a signal was received and its stop did not get through."""
    if _pending is not None:
        raise Interrupted(_pending)


def _handler(signum: int, frame) -> None:
    global _pending
    if _pending is not None:
        # Asked twice: stop now, by the signal's own default action.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _pending = signum
    raise Interrupted(signum)


def _unraisable(previous):
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            return  # Swallowed where Python ignores exceptions; `check` raises it again.
        previous(unraisable)

    return hook


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise `Interrupted` (in the main thread only, where
    Python runs signal handlers); the previous handlers come back on leaving."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    unraisable = sys.unraisablehook
    _pending = None
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handler)
        sys.unraisablehook = _unraisable(unraisable)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable
        _pending = None
