"""Trained generations on disk, keyed by everything they depend on, shared by processes.

A normal run, a study's repeats and a tuning search keep their generations here: a run's in
`<workdir>/generations/`, a search's likewise. The first k generations of a chain at
(T, alpha) are the same whatever the chain's length, and generation 1 depends on
neither T nor alpha, so each trained generation is stored once under a key that hashes
what it depends on; any later chain, trial, worker or resumed run that needs it loads
it instead of training it again. A generation in flight keeps a checkpoint per epoch.

Layout of the folder:

    <key>.weights.h5        the classifier's weights after the generation
    <key>.json              its record (see `ChainRunner`), with `"entry"`: its key and
                            its weights file's name, size and SHA-256 (none for a
                            diverged generation), and `"checksum"`, the SHA-256 of all
                            the rest (`files.seal`). Written last, so its presence means
                            the entry is complete.
    <key>.ckpt-<e>.npz, <key>.ckpt.json
                            the generation in flight after epoch e: the arrays of its
                            training state (`Trainer.training_state`), then the state
                            (epoch, last logs, seconds, its key, the arrays file's name,
                            size and SHA-256), sealed likewise
    <key>.lock              held while one process trains that generation
    trained.jsonl           one line per generation actually trained (the epoch count)

Every file is written to a temporary name and renamed into place (`krefinery.files`),
and everything is checked when read back (`files.checked_file`, `files.unseal`): a file
that fails is `Damaged`, and the runner trains the generation again (or restarts
it, for a checkpoint) rather than go on from it. Names in records are plain file names in
this folder, never a path elsewhere. A record from before checksums (no `"entry"`, no
`"checksum"`) is checked as far as it can be: its figures are there and its weights file
reads whole as HDF5; a checkpoint from before them is dropped (its epoch cannot be told
from an edited one, and at most one generation's epochs are lost).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import keras
import numpy as np

from krefinery import files
from krefinery.chain import refinery_model
from krefinery.config import LEARNED, REFINERY_FIELDS, Config, Refinement
from krefinery.errors import Damaged
from krefinery.runtime.hosts import ALONE, Hosts

# The runtime entries of what every run trained on before the backend, --distribute and
# --input were recorded (TensorFlow, one device, tf.data), left out of keys so that
# those keys stay valid.
DEFAULT_RUNTIME = (("backend", "tensorflow"), ("distribute", "none"), ("replicas", 1), ("input", "tfdata"))
TRAINED_LOG = "trained.jsonl"
# In a stored record: what it goes with, its key and its weights file (`files.file_entry`).
ENTRY = "entry"
# The figures every record has, by kind: numbers, checked on every read.
FIGURES = ("epochs", "val_accuracy", "train_accuracy", "train_label_agreement", "train_label_entropy", "seconds")
DIVERGED_FIGURES = ("epochs", "epoch", "seconds")
LOADED_FIGURES = ("epochs", "val_accuracy", "seconds")  # A refinery read from a file.
# 2: per-epoch stateless data streams; resolved precision, XLA and determinism in the key.
# 3: batch normalization through TensorFlow's fused kernel (core.batchnorm): other rounding.
FORMAT = 3


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
    if config.refinery_model is not None:
        base["refinery"] = {"model_sha256": refinery_model.digest(config.refinery_model)}
    elif config.architecture(1) != config.architecture(2):
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
    """A folder of trained generations; safe for concurrent processes on one host.

    In a run of several processes (`hosts`), every process makes each call, process 0
    alone writes, and no call returns before the write is done (`Hosts.barrier`).
    """

    def __init__(self, folder: os.PathLike | str, hosts: Hosts = ALONE):
        self.folder = Path(folder)
        self.hosts = hosts

        def make() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            files.remove_stale_temporaries(self.folder)

        self._written("store", make)

    def _written(self, name: str, write: Callable[[], None]) -> None:
        """`write()` on the writing process only; returns once every process is past it."""
        if self.hosts.writer:
            write()
        self.hosts.barrier(f"store:{name}")

    def weights_path(self, key: str) -> Path:
        return self.folder / f"{key}.weights.h5"

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored record of a generation, or None if it has not been trained.

        Checked first, with its weights: a record or weights file that fails a check
        raises `Damaged` naming it, so that no figure or model is taken from a
        damaged entry (`ChainRunner` trains it again)."""
        path = self._record_path(key)
        record = files.read_record(path)
        if record is None:
            return None
        if files.CHECKSUM not in record and ENTRY not in record:
            return self._legacy(key, path, record)
        record = files.unseal(path, record)
        entry = record.pop(ENTRY, None)
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise Damaged(path, f"is not the record of entry {key}")
        _check_figures(path, record)
        if not record.get("diverged"):
            weights = files.checked_file(self.folder, entry.get("weights"), path)
            if weights.name != self.weights_path(key).name:
                raise Damaged(path, f"names {weights.name}, not {self.weights_path(key).name}")
        return record

    def store(self, key: str, classifier: keras.Model | None, record: dict[str, Any]) -> None:
        """Weights first (none for a diverged generation), then the record naming their
        size and SHA-256, each by rename: readers never see half an entry. The
        generation's checkpoint goes."""

        def write() -> None:
            entry: dict[str, Any] = {"key": key}
            if classifier is not None:
                files.atomic_write(self.weights_path(key), classifier.save_weights)
                entry["weights"] = files.file_entry(self.weights_path(key))
            files.write_sealed(self._record_path(key), {**record, ENTRY: entry})
            self._drop_checkpoint(key)

        self._written(f"{key}.stored", write)

    def discard(self, key: str) -> None:
        """Removes a generation's entry (record first): one found damaged, to train again."""

        def remove() -> None:
            _remove(self._record_path(key))
            _remove(self.weights_path(key))

        self._written(f"{key}.discarded", remove)

    def save_checkpoint(
        self, key: str, arrays: Sequence[np.ndarray], state: dict[str, Any]
    ) -> None:
        """The generation in flight after epoch `state["epoch"]`: arrays, then state.

        Plain arrays in an `.npz`, not `save_weights`: Keras's weights file took 5-7x as
        long for the same arrays, walking the model's objects in Python (see
        bench/RESULTS.md, "Checkpoints").
        """
        weights = self.folder / f"{key}.ckpt-{state['epoch']}.npz"

        def write() -> None:
            files.atomic_write(weights, lambda temporary: _save_arrays(temporary, arrays))
            sealed = {**state, "key": key, "weights": files.file_entry(weights)}
            files.write_sealed(self._checkpoint_state(key), sealed)
            for older in self._checkpoint_arrays(key):
                if older != weights:
                    _remove(older)

        self._written(f"{key}.ckpt-{state['epoch']}", write)

    def checkpoint(self, key: str) -> tuple[dict[str, Any], list[np.ndarray]] | None:
        """The last checkpoint: its state (`epoch`, `logs`, `seconds`) and its arrays in
        the order they were saved; None if there is none.

        Both checked: a state or arrays file that fails raises `Damaged` naming
        it (`ChainRunner` then drops the checkpoint and restarts the generation)."""
        path = self._checkpoint_state(key)
        state = files.read_sealed(path)
        if state is None:
            return None
        epoch = state.get("epoch")
        if state.get("key") != key or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise Damaged(path, f"is not a checkpoint of entry {key}")
        if not isinstance(state.get("logs"), dict) or not _is_number(state.get("seconds")):
            raise Damaged(path, "lacks its logs or seconds")
        arrays = files.checked_file(self.folder, state.get("weights"), path)
        with np.load(arrays) as saved:
            return state, [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def drop_checkpoint(self, key: str) -> None:
        """Removes a generation's checkpoint, state first; by the names the store gives,
        never by one read from a record."""
        self._written(f"{key}.ckpt-dropped", lambda: self._drop_checkpoint(key))

    def _drop_checkpoint(self, key: str) -> None:
        _remove(self._checkpoint_state(key))
        for arrays in self._checkpoint_arrays(key):
            _remove(arrays)

    def _record_path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _checkpoint_state(self, key: str) -> Path:
        return self.folder / f"{key}.ckpt.json"

    def _checkpoint_arrays(self, key: str) -> list[Path]:
        return list(self.folder.glob(f"{key}.ckpt-*.npz"))

    def _legacy(self, key: str, path: Path, record: dict[str, Any]) -> dict[str, Any]:
        """A record written before checksums, checked as far as it can be: its figures,
        and its weights there and readable whole as HDF5 (a cut or zeroed file is not).
        An edited figure or a flipped bit in a weight goes unseen: such an entry is as
        trustworthy as it was before this check existed."""
        _check_figures(path, record)
        if record.get("diverged"):
            return record
        import h5py  # Keras's own dependency; only records this old need it.

        weights = self.weights_path(key)
        if not weights.is_file():
            raise Damaged(weights, "is missing")
        try:
            with h5py.File(weights, "r") as saved:
                saved.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
        except Exception:  # h5py raises OSError, KeyError, RuntimeError... for a damaged file.
            raise Damaged(weights, "is not a readable weights file") from None
        return record

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive while held, across processes: one of them trains `key`, others wait.
        (The processes of one run train it together: the writer holds the lock for them.)"""
        with files.exclusive(self.folder / f"{key}.lock") if self.hosts.writer else contextlib.nullcontext():
            yield

    def log_training(self, entry: dict[str, Any]) -> None:
        """Appends one line to `trained.jsonl`; a single short append is atomic."""

        def append() -> None:
            with open(self.folder / TRAINED_LOG, "a") as handle:
                handle.write(json.dumps(entry) + "\n")

        self._written("trained", append)

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


def _check_figures(path: Path, record: dict[str, Any]) -> None:
    """Every figure a generation's record has, a number: else `Damaged`."""
    names = DIVERGED_FIGURES if record.get("diverged") else LOADED_FIGURES if record.get("loaded") else FIGURES
    missing = [name for name in names if not _is_number(record.get(name))]
    if missing:
        raise Damaged(path, f"lacks {', '.join(missing)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _save_arrays(path: Path, arrays: Sequence[np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, *arrays)


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
