"""A trained model as the refinery (`--refinery_model`): an export of a chain's generation 1
labels a new chain exactly as it did in its own run; a changed file is never taken for
the old one; a `.keras` file serves too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CHAIN,
    comparable_generation,
    read_results,
    read_weights,
    refusal,
    run_cli,
    trained_generations,
)

from krefinery.chain.store import chain_keys
from krefinery.config import KERAS_MODEL_BESIDE_SAVEDMODEL, Config, Refinement
from krefinery.outputs import report


def run(workdir: Path, models: Path, *extra: str) -> dict:
    run_cli(*CHAIN, *extra, f"--workdir={workdir}", f"--export_dir={models}")
    return read_results(workdir)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """helpers.CHAIN with every generation exported: the model the refineries come from."""
    root = tmp_path_factory.mktemp("source")
    results = run(root / "run", root / "models", "--export_all_generations")
    return {"results": results, "workdir": root / "run", "models": root / "models"}


def test_an_exported_generation_1_refines_a_new_chain_exactly_as_in_its_own_run(source, tmp_path):
    exported = source["models"] / "digits_gen1"  # A model folder: its highest version is read.
    results = run(tmp_path / "run", tmp_path / "models", f"--refinery_model={exported}")
    first, second = results["generations"]
    original = source["results"]["generations"]
    # Generation 1 is the file, not trained, and tested as the refinery.
    assert first["loaded"] is True and first["epochs"] == 0
    assert [g["generation"] for g in trained_generations(tmp_path / "run")] == [2]
    assert first["test_accuracy"] == original[0]["test_accuracy"]
    assert first["val_accuracy"] == original[0]["val_accuracy"]
    # Its labels are the ones it gave in its own run, so generation 2 is the same model.
    assert comparable_generation(second, "key") == comparable_generation(original[1], "key")
    ours, theirs = read_weights(tmp_path / "run" / "gen_2.weights.h5"), read_weights(source["workdir"] / "gen_2.weights.h5")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    table = report.format_table(results).splitlines()
    assert table[2].split()[3] == "loaded" and table[2].endswith("loaded model (--refinery_model) (0.08M parameters)")


def test_a_changed_file_is_a_new_refinery_and_a_keras_file_serves(source, tmp_path, capsys):
    """The same path with generation 2's model copied over generation 1's: the store's keys
    hash the content, the finished run in the same folder refuses to pass for the new
    file's, and a new folder gets the new file's figures."""
    refinery = tmp_path / "refinery.keras"
    shutil.copy(source["models"] / "digits_gen1" / "1" / KERAS_MODEL_BESIDE_SAVEDMODEL, refinery)
    args = (f"--refinery_model={refinery}", "--generations=1")
    first = run(tmp_path / "run", tmp_path / "models", *args)["generations"][0]
    assert first["test_accuracy"] == source["results"]["generations"][0]["test_accuracy"]
    config = Config(refinery_model=os.fspath(refinery))
    before = chain_keys(config, {}, Refinement(2))

    shutil.copy(source["models"] / "digits_gen2" / "1" / KERAS_MODEL_BESIDE_SAVEDMODEL, refinery)
    after = chain_keys(config, {}, Refinement(2))
    assert before[0] != after[0] and before[1] != after[1]
    line = refusal(capsys, *CHAIN, *args, f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    assert f"the file --refinery_model={refinery} names has changed" in line
    changed = run(tmp_path / "other", tmp_path / "models", *args)["generations"][0]
    assert changed["test_accuracy"] == source["results"]["generations"][1]["test_accuracy"]


def test_online_the_loaded_refinery_teaches_every_batch_of_generation_2(source, tmp_path):
    exported = source["models"] / "digits_gen1" / "1"  # A version folder.
    results = run(tmp_path / "run", tmp_path / "models", f"--refinery_model={exported}", "--relabel=online")
    first, second = results["generations"]
    assert first["loaded"] is True
    assert first["test_accuracy"] == source["results"]["generations"][0]["test_accuracy"]
    # The teacher's soft labels of augmented batches, not one-hot ground truth.
    assert second["train_label_entropy"] > 0.05 and second["train_label_agreement"] < 1.0
