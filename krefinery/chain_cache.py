"""Trained generations on disk, keyed by everything they depend on, shared by processes.

A tuning search asks for many chains that share prefixes: generation 1 depends on
neither temperature nor alpha, and the first k generations of a chain at (T, alpha) are
the same whatever the chain's length. Each trained generation is stored once under a
key that hashes what it depends on; any trial, worker or resumed search that needs it
loads it instead of training it again.

Layout of the cache folder:

    <key>.weights.h5   the classifier's weights after the generation
    <key>.json         its figures (validation accuracy, ...); written last, so its
                       presence means the entry is complete
    <key>.lock         held while one process trains that generation
    trained.jsonl      one line per generation actually trained (the epoch count)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import keras

from krefinery.config import Config

# Config fields that do not change what a generation learns.
_NOT_IN_KEY = frozenset(
    {
        "generations",
        "temperature",
        "alpha",
        "workdir",
        "verbose",
        "export_dir",
        "export_name",
        "export_all_generations",
    }
)
TRAINED_LOG = "trained.jsonl"


def chain_keys(config: Config, generations: int, temperature: float, alpha: float) -> list[str]:
    """The keys of generations 1..`generations` of the chain at (`temperature`, `alpha`).

    Generation 1's key leaves temperature and alpha out (it trains on ground truth);
    generation k's key hashes its parent's key with k, temperature and alpha. Any other
    Config field (data, model, schedule, seed, relabel mode, ...) is in every key.
    """
    base = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
    keys = [_digest({"format": 1, "config": base, "generation": 1})]
    for generation in range(2, generations + 1):
        keys.append(
            _digest(
                {
                    "parent": keys[-1],
                    "generation": generation,
                    "temperature": float(temperature),
                    "alpha": float(alpha),
                }
            )
        )
    return keys


class GenerationCache:
    """A folder of trained generations; safe for concurrent processes on one host."""

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def weights_path(self, key: str) -> Path:
        return self.folder / f"{key}.weights.h5"

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored figures of a generation, or None if it has not been trained."""
        try:
            return json.loads((self.folder / f"{key}.json").read_text())
        except FileNotFoundError:
            return None

    def store(self, key: str, classifier: keras.Model, record: dict[str, Any]) -> None:
        """Weights first, then figures, each by rename: readers never see half an entry."""
        temporary = self.folder / f".{key}.{os.getpid()}.weights.h5"
        classifier.save_weights(temporary)
        os.replace(temporary, self.weights_path(key))
        _write_atomically(self.folder / f"{key}.json", json.dumps(record, indent=2) + "\n")

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive while held, across processes: one of them trains `key`, others wait."""
        with open(self.folder / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def log_training(self, entry: dict[str, Any]) -> None:
        """Appends one line to `trained.jsonl`; a single short append is atomic."""
        with open(self.folder / TRAINED_LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def trained(self) -> list[dict[str, Any]]:
        """Every generation trained into this cache, in order, by any process."""
        path = self.folder / TRAINED_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)
