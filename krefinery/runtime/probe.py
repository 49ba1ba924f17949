"""`--precision=auto` measured on this machine rather than read from a table of kinds.

Machines of one kind disagree: on an AMD EPYC with AVX512_BF16 bfloat16 steps beat
float32's, on an Intel Xeon with the same flag they did not (bench/RESULTS.md). So where
the device has bfloat16 hardware, the first run of a model shape here times a few
training steps of that model, at the run's batch size, in each candidate precision,
alternating in one process, and keeps the faster. The figures go to a JSON file in the
user's cache folder, keyed by the CPU model, the library versions and the model's shape,
so every later run of that shape here reads them back and picks the same precision
without timing again: a machine's runs stay reproducible. Without bfloat16 hardware
there is nothing to measure (emulated bfloat16 ran 26-55% slower): float32.

`KREFINERY_PRECISION_PROBE=0` turns the probe off (the test suite does, for speed and
so that no test depends on timing); `auto` then reads `device.DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from krefinery import files
from krefinery.runtime.device import cpu_flags, cpu_model

CANDIDATES = ("float32", "mixed_bfloat16")
PROBE_ENV = "KREFINERY_PRECISION_PROBE"
CACHE_ENV = "KREFINERY_CACHE_DIR"
CACHE_FILE = "precision.json"
# Enough to rank two settings that differ by 10% or more; a few seconds on a CPU.
WARMUP_STEPS, STEPS, ROUNDS = 2, 3, 3
LIBRARIES = ("keras", "tensorflow", "jax", "jaxlib")


@dataclasses.dataclass(frozen=True)
class Choice:
    """The precision `auto` resolved to and the training images a second each candidate
    ran at here; `cached`: read back from the cache, not timed now."""

    precision: str
    images_per_second: dict[str, float]
    cached: bool

    def line(self, cache: Path) -> str:
        figures = ", ".join(f"{name} {rate:.0f} img/s" for name, rate in self.images_per_second.items())
        how = f"measured earlier here, kept in {cache}" if self.cached else f"measured now, kept in {cache}"
        return f"--precision=auto: {self.precision} ({figures}; {how})"


def enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1") != "0"


def cache_path() -> Path:
    """`$KREFINERY_CACHE_DIR`, else `$XDG_CACHE_HOME/krefinery`, else `~/.cache/krefinery`."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "krefinery")
    return Path(folder) / CACHE_FILE


def machine_key(model: Mapping[str, Any]) -> str:
    """What the measurement depends on: this CPU (model and feature flags), the library
    versions, the backend, and the model's shape and batch (`model`)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    facts = {"cpu": cpu_model(), "flags": sorted(cpu_flags()), "versions": versions, "model": dict(model)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def choose_precision(
    model: Mapping[str, Any],
    candidates: tuple[str, ...],
    make_step: Callable[[str], Callable[[], None]],
    batch_size: int,
    cache: Path | None = None,
) -> Choice:
    """The fastest of `candidates` for `model` (a JSON-able description of the model, the
    batch and the backend), read from `cache` or measured now and written there.

    `make_step(precision)` builds the model in that precision and returns one training
    step (see `measure`). One process measures at a time: runs started together (a
    search's workers) would otherwise time each other's load, and could choose apart.
    """
    cache = cache or cache_path()
    cache.parent.mkdir(parents=True, exist_ok=True)
    key = machine_key(model)
    with files.exclusive(cache.with_name(cache.name + ".lock")):
        known = _read(cache)
        entry = known.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("precision") in candidates
            and isinstance(entry.get("images_per_second"), dict)
        ):
            return Choice(entry["precision"], entry["images_per_second"], cached=True)
        rates = measure(candidates, make_step, batch_size)
        best = max(candidates, key=lambda name: rates[name])  # Ties: the first, float32.
        known[key] = {"precision": best, "images_per_second": rates, "model": dict(model), "cpu": cpu_model()}
        files.write_json(cache, known)
    return Choice(best, rates, cached=False)


def measure(
    candidates: tuple[str, ...], make_step: Callable[[str], Callable[[], None]], batch_size: int
) -> dict[str, float]:
    """Images a second of each candidate's step: warmed up, then ROUNDS rounds of STEPS
    steps, the candidates alternating; each candidate's median round."""
    steps = {name: make_step(name) for name in candidates}
    for step in steps.values():
        for _ in range(WARMUP_STEPS):
            step()
    rounds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                step()
            rounds[name].append(time.perf_counter() - start)
    return {name: round(batch_size * STEPS / statistics.median(times), 1) for name, times in rounds.items()}


def _read(cache: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable cache is measured again and rewritten, never trusted."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}
