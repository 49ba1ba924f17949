"""A refinery of another architecture: generation 1 (depth 14) labels for students of depth 8,
offline and online, through the store, a kill -9, the export, predict and a search."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    RELABEL_FIGURES,
    comparable_generation,
    copy_stored,
    digits_test_batch,
    hparams_table,
    read_json,
    read_results,
    run_cli,
    run_forked,
    serve,
    trained_generations,
)

from krefinery import faults
from krefinery.config import Architecture, Config, Refinement
from krefinery.core.resnet import build_resnet
from krefinery.outputs import report

REFINERY, STUDENT = Architecture(14, 1, 1), Architecture(8, 1, 1)
# At T = 20 the students learn from near-uniform labels, so the refinery is the best
# generation and the run exports it.
ONLINE = (
    "--depth=8", "--refinery_depth=14", "--relabel=online", "--temperature=20", "--epochs=2",
    "--batch_size=128", "--val_fraction=0.5", "--warmup_epochs=0", "--verbose=0",
    "--precision=float32",
)


def model(architecture: Architecture, weights: Path | None = None) -> keras.Model:
    built = build_resnet(
        (8, 8, 1), 10, depth=architecture.depth, width=architecture.width, version=architecture.version
    )
    if weights is not None:
        built.load_weights(weights)
    return built


def assert_holds(weights: Path, architecture: Architecture, other: Architecture) -> None:
    """`weights` loads into a model of `architecture` and not into one of `other`."""
    model(architecture, weights)
    # Keras warns about each container it cannot match before it refuses the file.
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model(other, weights)


def assert_serves(export: Path, architecture: Architecture, weights: Path) -> None:
    """The SavedModel gives the probabilities of a model of `architecture` holding `weights`."""
    images = digits_test_batch(16)["image"]
    expected = keras.ops.softmax(model(architecture, weights)(images, training=False))
    np.testing.assert_allclose(serve(export, images)["probabilities"], np.asarray(expected), atol=1e-5)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory) -> dict:
    """The online chain, run once and never interrupted."""
    root = tmp_path_factory.mktemp("online")
    run_cli(*ONLINE, "--generations=3", f"--workdir={root / 'run'}", f"--export_dir={root / 'models'}")
    return {"workdir": root / "run", "models": root / "models", "results": read_results(root / "run")}


def test_online_the_refinery_teaches_generation_2_and_each_student_the_next(online_run):
    results, workdir = online_run["results"], online_run["workdir"]
    assert [g["architecture"] for g in results["generations"]] == [
        REFINERY.to_dict(), STUDENT.to_dict(), STUDENT.to_dict()
    ]
    assert results["config"]["refinery_depth"] == 14 and results["config"]["depth"] == 8
    table = report.format_table(results).splitlines()
    assert table[0].split()[-1] == "model"
    assert [line.split(maxsplit=6)[-1] for line in table[2:5]] == [
        "ResNet-14 v1 (0.17M parameters)", "ResNet-8 v1 (0.08M parameters)", "ResNet-8 v1 (0.08M parameters)"
    ]
    assert_holds(workdir / "gen_1.weights.h5", REFINERY, STUDENT)
    for generation in (2, 3):
        assert_holds(workdir / f"gen_{generation}.weights.h5", STUDENT, REFINERY)
    # Generations 2 and 3 trained on their teachers' soft labels, not the ground truth.
    for g in results["generations"][1:]:
        assert g["train_label_entropy"] > 0.05 and g["train_label_agreement"] < 1.0
    # The best generation, the refinery, is exported as a depth-14 model.
    assert results["best_generation"] == 1, results["generations"]
    assert_serves(Path(results["exports"]["best"]), REFINERY, workdir / "gen_1.weights.h5")


def test_killed_in_generation_2_the_same_command_finishes_the_same_run(online_run, tmp_path):
    """kill -9 mid-generation 2, after its first checkpoint: the rerun loads the stored
    refinery (depth 14), restores the student and its depth-14 teacher, and finishes as
    the uninterrupted chain did (a 2-generation chain: the 3-generation one's prefix, by
    the same store keys). Its refinery is stored as an earlier run left it."""
    workdir, models = tmp_path / "run", tmp_path / "models"
    args = (*ONLINE, "--generations=2", f"--workdir={workdir}", f"--export_dir={models}")
    copy_stored(online_run["results"], workdir, 1)
    killed = run_forked(*args, cwd=tmp_path, env={faults.KILL_AT: "gen2.epoch2.batch2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    store = workdir / "generations"
    (state,) = [json.loads(p.read_text()) for p in store.glob("*.ckpt.json")]
    assert state["epoch"] == 1
    assert [g["generation"] for g in read_results(workdir)["generations"]] == [1]

    run_cli(*args)
    resumed, reference = read_results(workdir), online_run["results"]
    assert [comparable_generation(g, *RELABEL_FIGURES) for g in resumed["generations"]] == [
        comparable_generation(g, *RELABEL_FIGURES) for g in reference["generations"][:2]
    ]
    last, same = resumed["generations"][1], reference["generations"][1]
    assert last["train_accuracy_unaugmented"] == pytest.approx(same["train_accuracy_unaugmented"], abs=1e-6)
    assert [entry["generation"] for entry in trained_generations(workdir)] == [2]
    assert resumed["finished"] and resumed["best_generation"] == 1


def test_offline_search_shares_one_refinery_and_exports_it_when_it_is_best(tmp_path):
    """Two trials at temperatures so high that the students learn from near-uniform
    labels: generation 1, the refinery, is trained once, is every trial's best, and the
    search exports it as a depth-14 model, which `--predict` serves."""
    run_cli(
        "--tune", "--depth=8", "--refinery_depth=14", "--epochs=1", "--batch_size=128",
        "--val_fraction=0.5", "--warmup_epochs=0", "--verbose=0", "--precision=float32", "--tune_generations=2,2",
        "--tune_temperature=50,100", "--max_trials=2", f"--workdir={tmp_path / 'search'}",
        f"--export_dir={tmp_path / 'models'}",
    )
    record = read_json(tmp_path / "search" / "tuning.json")
    trained = trained_generations(tmp_path / "search")
    assert sorted((g["generation"], g["temperature"]) for g in trained) == [(1, None), (2, 50.0), (2, 100.0)]
    assert record["best"]["generations"] == 1, record["trials"]
    weights = tmp_path / "search" / record["best"]["weights"]
    assert_holds(weights, REFINERY, STUDENT)
    assert_serves(Path(record["best"]["export"]), REFINERY, weights)
    # The HParams dashboard shows each trial's refinery with its T and alpha.
    experiment, groups = hparams_table(tmp_path / "search" / "tensorboard")
    refinery = {"refinery_depth": 14, "refinery_width": 1, "refinery_version": 1}
    for t in record["trials"]:
        assert groups[t["trial_id"]]["hparams"] == {
            "generations": 2, "temperature": t["temperature"], "alpha": 0.0, **refinery
        }
    domains = {info["name"]: info for info in experiment["hparamInfos"]}
    assert domains["refinery_depth"]["domainDiscrete"] == [14.0]

    from krefinery.commands.predict import predict_files

    image = tmp_path / "digit.png"
    batch = digits_test_batch(1)
    image.write_bytes(tf.io.encode_png(batch["image"][0]).numpy())
    (name, top), = predict_files(record["best"]["export"], [image], top_k=1)
    logits = model(REFINERY, weights)(batch["image"], training=False)
    assert top[0][0] == str(int(np.argmax(logits)))


def test_store_keys_change_only_with_the_refinery_architecture():
    from krefinery.chain.store import chain_keys

    runtime = {"precision": "float32", "jit_compile": False, "deterministic": True}
    plain = Config(depth=8)
    keys = chain_keys(plain, runtime, Refinement(2))
    # Given as the students' shape, flag by flag, it is the same chain.
    same = Config(depth=8, refinery_depth=8, refinery_width=1, refinery_version=1)
    assert chain_keys(same, runtime, Refinement(2)) == keys
    for changed in ({"refinery_depth": 14}, {"refinery_width": 2}, {"refinery_version": 2}):
        other = chain_keys(Config(depth=8, **changed), runtime, Refinement(2))
        assert other[0] != keys[0] and other[1] != keys[1]
    # Unset, the fields are in no record, setting or key: stores from before still serve.
    assert not {"refinery_depth", "refinery_width", "refinery_version"} & set(plain.to_dict())


@pytest.mark.parametrize(
    "flags, relabel, count",
    [({}, "offline", 1), ({}, "online", 1), ({"refinery_depth": 8}, "online", 1),
     ({"refinery_depth": 14}, "offline", 2), ({"refinery_width": 2}, "online", 3)],
)
def test_one_trainer_unless_the_refinery_has_its_own_shape(flags, relabel, count):
    """Each trainer traces its own steps: a chain with no refinery of its own keeps one."""
    from krefinery.chain.experiment import trainer_shape

    config = Config(depth=8, relabel=relabel, **flags)
    shapes = [trainer_shape(config, generation) for generation in range(1, 6)]
    assert len(set(shapes)) == count
    if relabel == "online":
        # Generation k's teacher slot has generation k-1's architecture.
        assert [teacher for _, teacher in shapes[1:]] == [config.architecture(k) for k in range(1, 5)]
