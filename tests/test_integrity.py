"""A work directory that cannot be fooled: every file a run goes on from is checked when read
back, and one that fails (cut, zeroed, a flipped byte, an edited figure, deleted, naming a
file elsewhere) is trained again, dropped or rebuilt, with one warning line naming it. The
same command then finishes with the results and the export of a run never damaged.

One uninterrupted chain is the reference, and one chain is killed in generation 2 (after
its first checkpoint); each case tampers with a copy of that killed folder. How each kind of
file is caught is checked on the store and results.json directly (no training); one rerun
goes on from a damaged file of each reader (stored generation, checkpoint, results.json),
and one rebuilds a finished run's results.json.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import (
    CHAIN,
    comparable,
    finished_copy,
    read_results,
    run_chain,
    run_cli,
    run_forked,
)

from krefinery import files
from krefinery.errors import Damaged


@pytest.fixture(scope="module")
def reference(chain_reference) -> dict:
    """The chain run once (in conftest), never interrupted: its results and its exported model."""
    return {"results": chain_reference["results"], "export": exported(chain_reference["models"])}


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A folder holding `run/` and `models/` of the chain killed (kill -9, in a process of
    its own) in generation 2's second epoch: generation 1 stored, generation 2's
    checkpoint after epoch 1, results.json with generation 1."""
    root = tmp_path_factory.mktemp("killed")
    result = run_forked(
        *CHAIN, f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}", env={"KREFINERY_KILL_AT": "gen2.epoch2.batch5"}
    )
    assert result.returncode == -9, result.stderr[-3000:]
    store = root / "run" / "generations"
    assert len(list(store.glob("*.ckpt.json"))) == 1 and len(list(store.glob("*.weights.h5"))) == 1
    return root


def exported(models: Path) -> dict[str, list]:
    """The tensors saved in the one exported version, by name: the model, to compare."""
    import tensorflow as tf

    (version,) = (models / "digits").iterdir()
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    names = [name for name in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in name]
    assert names
    return {name: reader.get_tensor(name).tolist() for name in names}


class Run:
    """A work directory `run/` and its `models/` under `root`, and where their files are
    (generation 2's checkpoint, in a killed one)."""

    def __init__(self, root: Path, keys: list[str]):
        self.root, self.workdir, self.models = root, root / "run", root / "models"
        self.store = self.workdir / "generations"
        self.record = self.store / f"{keys[0]}.json"
        self.weights = self.store / f"{keys[0]}.weights.h5"
        self.checkpoint = self.store / f"{keys[1]}.ckpt.json"
        self.arrays = self.store / f"{keys[1]}.ckpt-1.npz"
        self.results = self.workdir / "results.json"
        self.keys = keys

    @classmethod
    def copy_of(cls, killed: Path, root: Path, reference: dict) -> Run:
        shutil.copytree(killed, root, symlinks=True)
        return cls(root, [g["key"] for g in reference["results"]["generations"]])

    def rerun(self, capsys) -> list[str]:
        """The same command, in this process: exit 0, no traceback; the warning lines it
        printed (but the under-fit warning of this short chain)."""
        capsys.readouterr()
        assert run_chain(self.workdir, self.models) == 0
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return [line for line in err.splitlines() if line.startswith("warning:") and "under-fits" not in line]

    def trained(self) -> list[tuple[int, int]]:
        """(generation, epochs) of each generation trained into the store, in order."""
        lines = (self.store / "trained.jsonl").read_text().splitlines()
        return [(entry["generation"], entry["epochs"]) for entry in map(json.loads, lines)]

    def assert_as_never_damaged(self, reference: dict, capsys) -> None:
        """Results and export those of the uninterrupted run, and nothing stuck: the same
        command again warns of nothing and changes nothing."""
        results = read_results(self.workdir)
        assert results["finished"] is True
        assert comparable(results) == comparable(reference["results"])
        assert exported(self.models) == reference["export"]
        assert self.rerun(capsys) == []
        assert read_results(self.workdir) == results
        assert not list(self.store.glob("*.ckpt*")) and not list(self.store.glob(".tmp-*"))


@pytest.fixture
def copy(killed, reference, tmp_path) -> Run:
    """A copy of the killed run, to tamper with."""
    return Run.copy_of(killed, tmp_path / "copy", reference)


# Tampering, as a disk, a copy cut short or a hand might.
def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zeroed(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def flipped(path: Path) -> None:
    """One bit of one byte, past the middle (a weight, in a weights file)."""
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


def deleted(path: Path) -> None:
    path.unlink()


def edit(path: Path, pattern: str, replace) -> None:
    """One match of `pattern` in a text file, rewritten."""
    text, count = re.subn(pattern, replace, path.read_text(), count=1)
    assert count == 1, pattern
    path.write_text(text)


def one_digit(field: str):
    """The first decimal of a figure, changed (0.9444 -> 0.4444): the best generation flips."""
    return lambda path: edit(path, rf'("{field}": \d\.)(\d)', lambda m: m[1] + str((int(m[2]) + 5) % 10))


def epoch_two(path: Path) -> None:
    edit(path, r'"epoch": 1\b', '"epoch": 2')


def names_outside(path: Path) -> None:
    """The checkpoint's arrays file renamed to one outside the store, by hand."""
    edit(path, r'"name": "[^"]+"', '"name": "../../other/x.npz"')


def forged_outside(path: Path) -> None:
    """A checkpoint naming an arrays file outside the store with its true size and SHA-256,
    and sealed again: only the name tells. The file there is a copy of the real one."""
    state = files.unseal(path, json.loads(path.read_text()))
    outside = path.parents[2] / "other" / "x.npz"
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(path.parent / state["weights"]["name"], outside)
    state["weights"] = {**files.file_entry(outside), "name": "../../other/x.npz"}
    files.write_sealed(path, state)


def linked_outside(path: Path) -> None:
    """The file moved out of the store, a link to it left in its place: same bytes."""
    outside = path.parents[2] / "other" / path.name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(path, outside)
    path.symlink_to(outside)


def unsealed(path: Path) -> None:
    """The checksum taken out (as written before there were checksums)."""
    record = json.loads(path.read_text())
    del record[files.CHECKSUM]
    path.write_text(json.dumps(record, indent=2))


TAMPERS = {
    "cut": cut, "zeroed": zeroed, "flipped": flipped, "deleted": deleted,
    "val_accuracy": one_digit("val_accuracy"), "unsealed": unsealed,
    "epochs 2 -> 3": lambda path: edit(path, r'"epochs": 2', '"epochs": 3'),
    "epoch 1 -> 2": epoch_two, "names outside": names_outside, "forged outside": forged_outside,
    "linked outside": linked_outside,
    "best_generation 1 -> 2": lambda path: edit(path, r'"best_generation": 1', '"best_generation": 2'),
}
BYTES = ("cut", "zeroed", "flipped")


@pytest.mark.parametrize(
    "target, tamper",
    [
        *[("record", t) for t in (*BYTES, "val_accuracy", "epochs 2 -> 3", "unsealed")],
        *[("weights", t) for t in (*BYTES, "deleted", "linked outside")],
    ],
)
def test_a_damaged_stored_generation_is_caught_naming_the_file(copy, target, tamper):
    from krefinery.chain.store import GenerationStore

    TAMPERS[tamper](getattr(copy, target))
    with pytest.raises(Damaged) as caught:
        GenerationStore(copy.store).lookup(copy.keys[0])
    assert caught.value.path == getattr(copy, target)


def test_a_stored_generation_without_its_record_was_never_stored(copy):
    """The record is written last: without it, the generation is trained, without a word."""
    from krefinery.chain.store import GenerationStore

    copy.record.unlink()
    assert GenerationStore(copy.store).lookup(copy.keys[0]) is None


@pytest.mark.parametrize(
    "target, tamper",
    [
        *[("checkpoint", t) for t in (*BYTES, "epoch 1 -> 2", "val_accuracy", "names outside", "forged outside", "unsealed")],
        *[("arrays", t) for t in (*BYTES, "deleted", "linked outside")],
    ],
)
def test_a_damaged_checkpoint_is_caught_naming_the_file(copy, target, tamper):
    from krefinery.chain.store import GenerationStore

    TAMPERS[tamper](getattr(copy, target))
    with pytest.raises(Damaged) as caught:
        GenerationStore(copy.store).checkpoint(copy.keys[1])
    assert caught.value.path == getattr(copy, target)
    if tamper == "forged outside":  # Sealed again: only the name gives it away.
        assert "names '../../other/x.npz', not a file in" in str(caught.value)


@pytest.mark.parametrize("tamper", [*BYTES, "best_generation 1 -> 2", "unsealed"])
def test_a_damaged_results_json_is_caught(copy, tamper):
    from krefinery.outputs import report

    TAMPERS[tamper](copy.results)
    with pytest.raises(Damaged) as caught:
        report.read_results(copy.workdir)
    assert caught.value.path == copy.results


def test_a_checkpoint_is_removed_by_the_names_the_store_gives_never_by_one_it_reads(copy):
    from krefinery.chain.store import GenerationStore

    forged_outside(copy.checkpoint)
    GenerationStore(copy.store).drop_checkpoint(copy.keys[1])
    assert (copy.root / "other" / "x.npz").is_file()
    assert not copy.checkpoint.exists() and not copy.arrays.exists()


# One of each reader's files, damaged as the audit found them fooling a rerun: an edited
# val_accuracy (0.94 -> 0.44) made generation 2 the best and exported it; an edited epoch
# trained one epoch less and reported two; a cut results.json was refused ("choose another
# --workdir"). (Each reader's other damages are caught above; what the runner does with
# them is the same.)
DAMAGED = {"record": "val_accuracy", "checkpoint": "epoch 1 -> 2", "results": "cut"}
SAID = {
    "record": "stored generation 1 is damaged",
    "checkpoint": "the checkpoint of generation 2 is damaged",
    "results": "rebuilding it from the stored generations",
}


def test_a_killed_run_with_damaged_files_finishes_as_if_never_damaged(reference, copy, capsys):
    """Each damaged file gets one warning line naming it: a stored generation is trained
    again, a checkpoint dropped (its generation restarts from its first epoch), and
    results.json rebuilt from the store; exit 0, and the run is the undamaged one."""
    for target, tamper in DAMAGED.items():
        TAMPERS[tamper](getattr(copy, target))
    lines = copy.rerun(capsys)
    assert len(lines) == len(DAMAGED), lines
    for target in DAMAGED:
        (line,) = [line for line in lines if str(getattr(copy, target)) in line]
        assert SAID[target] in line
    # Generation 1 trained again, generation 2 from its first epoch (both epochs).
    assert copy.trained() == [(1, 2), (1, 2), (2, 2)]
    copy.assert_as_never_damaged(reference, capsys)


def test_a_damaged_marker_is_still_refused(copy, capsys):
    """run.json says whose folder it is: unreadable, the folder is refused (exit 2)."""
    cut(copy.workdir / "run.json")
    with pytest.raises(SystemExit) as exit_:
        run_cli(*CHAIN, f"--workdir={copy.workdir}", f"--export_dir={copy.models}")
    assert exit_.value.code == 2
    assert f"{copy.workdir / 'run.json'} cannot be read" in capsys.readouterr().err


def test_a_damaged_results_json_of_a_finished_run_is_rebuilt(chain_reference, reference, tmp_path, capsys):
    """A finished run's results.json with an edited figure is not its result: the same
    command rebuilds it from the store, training and exporting nothing. So does a run from
    before checksums (records and results.json without them): its stored generations are
    checked as far as they can be, and used. (On a finished copy of the reference.)"""
    run = Run(tmp_path / "finished", [g["key"] for g in reference["results"]["generations"]])
    finished_copy(chain_reference, run.root)
    finished = read_results(run.workdir)
    one_digit("test_accuracy")(run.results)
    (line,) = run.rerun(capsys)
    assert f"{run.results} does not match its checksum" in line and "rebuilding it" in line
    assert read_results(run.workdir) == finished
    run.assert_as_never_damaged(reference, capsys)

    for record in [run.results, *run.store.glob("*.json")]:
        old = json.loads(record.read_text())
        for name in (files.CHECKSUM, "entry"):
            old.pop(name, None)
        record.write_text(json.dumps(old, indent=2))
    (line,) = run.rerun(capsys)
    assert f"{run.results} has no checksum" in line
    assert run.trained() == [(1, 2), (2, 2)]  # Nothing trained but the reference's own.
    run.assert_as_never_damaged(reference, capsys)
    # From before checksums, a cut weights file is still caught: it does not read as HDF5.
    from krefinery.chain.store import GenerationStore

    store = shutil.copytree(run.store, tmp_path / "store")
    cut(store / run.weights.name)
    with pytest.raises(Damaged) as caught:
        GenerationStore(store).lookup(run.keys[0])
    assert caught.value.path == store / run.weights.name
