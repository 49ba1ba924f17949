"""Trained generations on disk, keyed by everything they depend on, shared by processes.

A normal run, a study's repeats and a tuning search keep their generations here: a run's in
`<workdir>/generations/`, a search's likewise. The first k generations of a chain at
(T, alpha) are the same whatever the chain's length, and generation 1 depends on
neither T nor alpha, so each trained generation is stored once under a key that hashes
what it depends on; any later chain, trial, worker or resumed run that needs it loads
it instead of training it again. A generation in flight keeps a checkpoint per epoch.

Layout of the folder:

    <key>.weights.h5        the classifier's weights after the generation
    <key>.json              its record (see `ChainRunner`); written last, so its presence
                            means the entry is complete. A diverged generation has a
                            record (`"diverged": true`) and no weights.
    <key>.ckpt-<e>.npz, <key>.ckpt.json
                            the generation in flight after epoch e: the arrays of its
                            training state (see `chains.training_state`), then the
                            state naming them
    <key>.lock              held while one process trains that generation
    trained.jsonl           one line per generation actually trained (the epoch count)

Every file is written to a temporary name and renamed into place (`krefinery.files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np

from krefinery import files
from krefinery.config import LEARNED, REFINERY_FIELDS, Config, Refinement

# The runtime entries of what every run trained on before the backend, --distribute and
# --input were recorded (TensorFlow, one device, tf.data), left out of keys so that
# those keys stay valid.
DEFAULT_RUNTIME = (("backend", "tensorflow"), ("distribute", "none"), ("replicas", 1), ("input", "tfdata"))
TRAINED_LOG = "trained.jsonl"
# 2: per-epoch stateless data streams; resolved precision, XLA and determinism in the key.
FORMAT = 2


def chain_keys(config: Config, runtime: Mapping[str, Any], refinement: Refinement) -> list[str]:
    """The keys of the generations of the chain that `refinement` describes.

    Generation 1's key leaves temperature and alpha out (it trains on ground truth);
    generation k's key hashes its parent's key with k, temperature and alpha. Every
    other Config field (data, model, schedule, seed, relabel mode, ...) is in every key
    (the refinery's architecture only where it is not the students', so that keys from
    before it existed stay valid), and so is `runtime`, what the run resolved to on this
    machine (precision, whether XLA really compiled, op determinism), not the `auto` or
    unset that was asked for.
    """
    learned = Config.fields(LEARNED)
    base = {k: v for k, v in config.to_dict().items() if k in learned}
    # Unset means "from --seed": the same splits, so the same key.
    base["split_seed"] = config.resolved_split_seed
    # Generation 1's architecture, only where it is not the students': a refinery given
    # as the students' shape, flag by flag or not at all, is the same generation 1.
    for name in REFINERY_FIELDS:
        base.pop(name, None)
    if config.architecture(1) != config.architecture(2):
        base["refinery"] = config.architecture(1).to_dict()
    runtime = {k: v for k, v in runtime.items() if (k, v) not in DEFAULT_RUNTIME}
    root = {"format": FORMAT, "config": base, "runtime": runtime, "generation": 1}
    keys = [_digest(root)]
    for generation in range(2, refinement.generations + 1):
        keys.append(
            _digest(
                {
                    "parent": keys[-1],
                    "generation": generation,
                    "temperature": refinement.temperature,
                    "alpha": refinement.alpha,
                }
            )
        )
    return keys


class GenerationStore:
    """A folder of trained generations; safe for concurrent processes on one host."""

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temporaries(self.folder)

    def weights_path(self, key: str) -> Path:
        return self.folder / f"{key}.weights.h5"

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored record of a generation, or None if it has not been trained."""
        return files.read_json(self.folder / f"{key}.json")

    def store(self, key: str, classifier: keras.Model | None, record: dict[str, Any]) -> None:
        """Weights first (none for a diverged generation), then the record, each by
        rename: readers never see half an entry. The generation's checkpoint goes."""
        if classifier is not None:
            files.atomic_write(self.weights_path(key), classifier.save_weights)
        files.write_json(self.folder / f"{key}.json", record)
        self.drop_checkpoint(key)

    def save_checkpoint(
        self, key: str, arrays: Sequence[np.ndarray], state: dict[str, Any]
    ) -> None:
        """The generation in flight after epoch `state["epoch"]`: arrays, then state.

        Plain arrays in an `.npz`, not `save_weights`: Keras's weights file took 5-7x as
        long for the same arrays, walking the model's objects in Python (see
        bench/RESULTS.md, "Checkpoints").
        """
        weights = self.folder / f"{key}.ckpt-{state['epoch']}.npz"
        files.atomic_write(weights, lambda temporary: _save_arrays(temporary, arrays))
        previous = self.checkpoint(key)
        files.write_json(self._checkpoint_state(key), {**state, "weights": weights.name})
        if previous is not None and previous["weights"] != weights.name:
            _remove(self.folder / previous["weights"])

    def checkpoint(self, key: str) -> dict[str, Any] | None:
        """The last checkpoint's state (`epoch`, `weights`, ...), or None."""
        return files.read_json(self._checkpoint_state(key))

    def checkpoint_arrays(self, key: str) -> list[np.ndarray]:
        """The arrays of the last checkpoint, in the order they were saved."""
        with np.load(self.folder / self.checkpoint(key)["weights"]) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def drop_checkpoint(self, key: str) -> None:
        """The generation's checkpoint, and any array file of it that a stopped or
        killed process left without its state (between the two writes)."""
        _remove(self._checkpoint_state(key))
        for arrays in self.folder.glob(f"{key}.ckpt-*.npz"):
            _remove(arrays)

    def _checkpoint_state(self, key: str) -> Path:
        return self.folder / f"{key}.ckpt.json"

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
        """Every generation trained into this store, in order, by any process."""
        path = self.folder / TRAINED_LOG
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        # A line cut short by a kill or a full disk is not a finished training.
        return [entry for entry in map(_parse_line, lines) if entry is not None]


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, *arrays)


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
