"""The processes that train one chain: this one alone, or several joined by JAX's runtime.

A run on several hosts is the same command on each, with Keras's variables for a
multi-process job (`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `_NUM_PROCESSES`, `_PROCESS_ID`).
`join` connects the processes through `jax.distributed` before JAX computes anything;
from then on every process runs every step, evaluation and relabel of the chain in
lockstep (JAX's collectives: gloo on CPUs, NCCL on GPUs), and process 0 alone writes
files (`Hosts.writer`), each write followed by a `barrier` so that no process reads
the work directory before it is written.

A peer that never joins, or dies, ends every process with one line (`PeerLost`) and
exit code 5 within `KREFINERY_JOIN_TIMEOUT` seconds (at the start) or a few (in a collective):
JAX's own reaction, an abort with a C++ stack trace at exit, is never reached (`exit_now`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import threading
from typing import Callable, Iterator, Mapping, NoReturn, Sequence, TypeVar

from krefinery.errors import PeerLost, UserError

ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
# Seconds each process waits for all the others to join (default 120).
JOIN_TIMEOUT = "KREFINERY_JOIN_TIMEOUT"
# Seconds a process may wait in a collective for the others (one writing an export).
COLLECTIVE_TIMEOUT = 3600
# Why a run on several processes is refused without --workdir.
WORKDIR_NEEDED = (
    "a run on several processes needs --workdir=PATH, a folder every host sees (on storage "
    "they share), the same on each."
)
# The longest line of the writer's that `Hosts.on_writer` hands to the other processes.
MESSAGE_BYTES = 2048
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This process's place among the `count` processes of the run."""

    index: int = 0
    count: int = 1

    @property
    def several(self) -> bool:
        return self.count > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files (process 0 does; the others
        compute the same figures and write nothing)."""
        return self.index == 0

    def barrier(self, name: str) -> None:
        """Returns once every process has reached the barrier `name`."""
        if self.several:
            from jax.experimental import multihost_utils

            with lost_peers(self):
                multihost_utils.sync_global_devices(name)

    def gather(self, texts: Sequence[str]) -> list[list[str]]:
        """The SHA-256 digest of each of `texts` (the same count on every process), as
        every process has them: one list per process, by index."""
        digests = [hashlib.sha256(text.encode()).digest() for text in texts]
        if not self.several:
            return [[digest.hex() for digest in digests]]
        import numpy as np
        from jax.experimental import multihost_utils

        local = np.frombuffer(b"".join(digests), np.uint8)
        with lost_peers(self):
            rows = np.asarray(multihost_utils.process_allgather(local)).reshape(self.count, len(texts), -1)
        return [[bytes(digest.astype(np.uint8)).hex() for digest in row] for row in rows]

    def on_writer(self, check: Callable[[], T]) -> T | None:
        """`check()` run by the writing process alone (None elsewhere); a `UserError` it
        raises is raised on every process, with its line, so none is left waiting."""
        if not self.several:
            return check()
        result, failure = None, ""
        if self.writer:
            try:
                result = check()
            except UserError as error:
                failure = str(error)
        import numpy as np
        from jax.experimental import multihost_utils

        text = np.frombuffer(failure.encode()[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0"), np.uint8)
        with lost_peers(self):
            shared = np.asarray(multihost_utils.broadcast_one_to_all(text), np.uint8)
        failure = bytes(shared).rstrip(b"\0").decode(errors="replace")
        if failure:
            raise UserError(failure)
        return result

    def differing(self, values: Mapping[str, str]) -> dict[str, list[int]]:
        """The names in `values` whose value differs from process 0's on some process,
        each with those processes (a collective: every process calls it, with the
        same names)."""
        names = list(values)
        rows = self.gather([values[name] for name in names])
        found = {name: [i for i, row in enumerate(rows) if row[n] != rows[0][n]] for n, name in enumerate(names)}
        return {name: processes for name, processes in found.items() if processes}


ALONE = Hosts()


def requested() -> int:
    """How many processes the environment asks this run to join (1: this one alone)."""
    text = os.environ.get(NUM_PROCESSES, "").strip()
    if not text:
        return 1
    count = int(text) if text.isdigit() else 0
    if count < 1:
        raise UserError(f"{NUM_PROCESSES}={text} must be a whole number of processes, 1 or more.")
    return count


def join() -> Hosts:
    """Joins this process to the others `requested` names, before JAX computes anything;
    `ALONE` when it names one. A missing or malformed variable is a `UserError`; a peer
    that does not come within `JOIN_TIMEOUT` seconds ends this process (`PeerLost`)."""
    count = requested()
    if count == 1:
        return ALONE
    address = os.environ.get(ADDRESSES, "").split(",")[0].strip()
    index_text = os.environ.get(PROCESS_ID, "").strip()
    if not address or not index_text:
        raise UserError(
            f"{NUM_PROCESSES}={count} needs {ADDRESSES} (process 0's host:port, the same on every "
            f"process) and {PROCESS_ID} (0 to {count - 1}, a different one on each)."
        )
    try:
        index = int(index_text)
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise UserError(f"{PROCESS_ID}={index_text} must be one of 0 to {count - 1}.")
    # A process waits in a collective while process 0 writes alone (an export, say);
    # XLA's CPU collectives give up after a timeout of their own, raised here.
    flag = f"--xla_cpu_collective_timeout_seconds={COLLECTIVE_TIMEOUT}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    wait = join_timeout()
    import jax

    # JAX's own timeout aborts the process with a stack trace; the watchdog says one
    # line first and ends it cleanly.
    watchdog = threading.Timer(wait, _not_joined, args=(index, count, address, wait))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            initialization_timeout=int(wait) + 60,
            heartbeat_timeout_seconds=int(wait) + 60,
        )
    finally:
        watchdog.cancel()
    return Hosts(index, count)


def join_timeout() -> float:
    text = os.environ.get(JOIN_TIMEOUT, "120").strip()
    try:
        wait = float(text)
    except ValueError:
        wait = 0.0
    if not wait > 0:
        raise UserError(f"{JOIN_TIMEOUT}={text} must be a number of seconds above 0.")
    return wait


def _not_joined(index: int, count: int, address: str, wait: float) -> None:
    others = "process 0 (at " + address + ")" if index else f"processes 1 to {count - 1}"
    exit_now(
        PeerLost(
            f"process {index} of {count}: not every process joined within {wait:g} s; "
            f"check that {others} started the same command ({NUM_PROCESSES}={count}, "
            f"{ADDRESSES}={address})."
        )
    )


@contextlib.contextmanager
def lost_peers(hosts: Hosts) -> Iterator[None]:
    """Turns a collective that fails because a peer is gone (gloo's or NCCL's error,
    raised in this process) into `PeerLost`, said in one line."""
    try:
        yield
    except Exception as error:
        if hosts.several and is_peer_failure(error):
            raise lost(hosts, error) from None
        raise


def is_peer_failure(error: BaseException) -> bool:
    text = str(error)
    return any(sign in text for sign in ("Gloo", "gloo", "NCCL", "Connection reset", "heartbeat", "Connection closed"))


def lost(hosts: Hosts, error: BaseException) -> PeerLost:
    first = " ".join(str(error).split())[:160]
    return PeerLost(
        f"process {hosts.index} of {hosts.count}: another process of the run is gone ({first}); "
        "the last checkpoint is on disk: start the same command on every host to resume."
    )


def exit_now(error: PeerLost) -> NoReturn:
    """Says `error` and ends this process at once: JAX's runtime, left to shut down, would
    wait for the lost peer and then abort."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(error.exit_code)
