"""run.py end to end: real digits, mocked TFDS datasets, and every kind of bad input."""

import math

import numpy as np
import pytest
from helpers import (
    ROOT,
    mocked_tfds,
    read_results,
    read_weights,
    refusal,
    run_cli,
    write_images,
)

from krefinery.runtime.device import resolve_precision

# One epoch a generation: no assertion made with it depends on how well a chain fits.
TINY = ("--depth=8", "--epochs=1", "--generations=2", "--batch_size=32", "--warmup_epochs=0", "--verbose=0", "--precision=float32")


def check_results(results: dict, generations: int) -> None:
    assert [g["generation"] for g in results["generations"]] == list(range(1, generations + 1))
    data = results["data"]
    for g in results["generations"]:
        # Accuracies are counts over the recorded split sizes, not figures from elsewhere.
        for key, size in (("val_accuracy", data["num_val"]), ("test_accuracy", data["num_test"])):
            assert g[key] * size == pytest.approx(round(g[key] * size), abs=1e-3), (key, g[key], size)
        assert math.isfinite(g["train_label_agreement"])
        assert g["seconds"] > 0
    assert results["generations"][0]["train_label_agreement"] == 1.0  # Ground truth.
    assert results["generations"][0]["train_label_entropy"] == 0.0
    best = max(results["generations"], key=lambda g: g["val_accuracy"])
    assert results["best_generation"] == best["generation"]


def test_the_default_job_leaves_every_output(tmp_path, capsys):
    """The default job (`python run.py`), cut to two epochs a generation: what it runs on
    and what it leaves behind. Whether it learns well enough (95% every generation) is
    `bench/default_run.py`'s question: an accuracy target is no timed test's."""
    run_cli("--epochs=2", f"--workdir={tmp_path}")
    results = read_results(tmp_path)
    check_results(results, generations=3)
    assert results["dataset"] == "digits" and results["config"]["generations"] == 3
    assert results["config"]["depth"] == 20 and results["config"]["batch_size"] == 64
    assert results["finished"] is True
    # What ran: op determinism is on, and under it Keras compiles without XLA, whatever
    # `resolve_jit_compile` asked for.
    assert results["runtime"] == {
        "backend": "tensorflow",
        "precision": resolve_precision("auto"),
        "jit_compile": False,
        "deterministic": True,
        "distribute": "none",  # auto: one CPU is one device.
        "replicas": 1,
        "input": "tfdata",  # auto, on a CPU.
    }
    assert results["data"]["num_train"] + results["data"]["num_val"] == 1437
    for g in results["generations"]:
        assert (tmp_path / g["weights"]).exists()
    # Later generations trained on refined labels, not one-hot ground truth.
    assert all(g["train_label_entropy"] > 0 for g in results["generations"][1:])
    # TensorBoard's sub-runs (folders of event files): 7, each its own colour of TensorBoard's 7.
    board = tmp_path / "tensorboard"
    runs = {p.parent.relative_to(board).as_posix() for p in board.rglob("events.out.tfevents.*")}
    assert sorted(runs) == [f"gen_{k}/{split}" for k in (1, 2, 3) for split in ("train", "validation")] + ["generations"]
    assert (tmp_path / "accuracy.png").exists()
    assert results["exports"]["best"].endswith("saved_models/digits/1")
    printed = capsys.readouterr()
    assert "test acc" in printed.out and "results.json" in printed.out


def test_precision_and_xla_flags_reach_keras():
    """What Keras builds and compiles for these flags, read off the experiment a run
    makes (its `runtime` is what results.json records, as the default job's test shows);
    a chain trained in mixed_bfloat16 is test_export's `digits_run`."""
    import run
    from krefinery.chain.experiment import prepare_experiment

    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", *TINY, "--generations=1", "--precision=mixed_bfloat16", "--jit_compile"])
    experiment = prepare_experiment(run.config_from_flags())
    # XLA asked for alone turns op determinism off (Keras allows one or the other), and
    # the record says what Keras really compiled with.
    assert experiment.runtime == {
        "backend": "tensorflow", "precision": "mixed_bfloat16", "jit_compile": True,
        "deterministic": False, "distribute": "none", "replicas": 1, "input": "tfdata",
    }
    trainer = experiment.trainer_for(1)
    assert trainer.jit_compile is True
    # Every layer with weights computes in bfloat16 but the logits, kept in float32.
    policies = {layer.name: layer.dtype_policy.name for layer in trainer.classifier.layers if layer.weights}
    assert policies.pop("logits") == "float32" and set(policies.values()) == {"mixed_bfloat16"}


def test_progress_is_a_line_an_epoch_where_the_output_is_not_a_terminal():
    import sys

    import run

    assert not sys.stdout.isatty()  # pytest captures it.
    for args, verbose in (((), 2), (("--verbose=1",), 1), (("--verbose=0",), 0)):
        run.FLAGS.unparse_flags()
        run.parse_flags(["run.py", *args])
        assert run.config_from_flags().verbose == verbose, args


def test_another_seed_gives_other_weights_and_figures(tmp_path):
    """The seed reaches the weights and the data order. (The same seed gives the same
    results and weights, interrupted or not: test_durable, test_integrity, test_stops.)"""
    a, c = tmp_path / "a", tmp_path / "c"
    for seed, workdir in ((7, a), (8, c)):
        run_cli(*TINY, f"--seed={seed}", "--generations=1", f"--workdir={workdir}")
    other = read_weights(c / "gen_1.weights.h5")
    first = read_weights(a / "gen_1.weights.h5")
    assert any(not np.array_equal(other[key], first[key]) for key in first)
    figures = ("val_accuracy", "test_accuracy", "train_accuracy", "train_accuracy_unaugmented")
    assert [read_results(a)["generations"][0][f] for f in figures] != [read_results(c)["generations"][0][f] for f in figures]


@pytest.mark.parametrize(
    "dataset, extra, sizes",
    # svhn's source is tested on mock data in test_datasets; past the source, a run does
    # not know which TFDS dataset it reads.
    [("cifar10", ("--relabel=online", "--temperature=2"), (36, 4, 40))],
)
def test_tfds_datasets_end_to_end_on_mock_data(tmp_path, dataset, extra, sizes):
    with mocked_tfds(num_examples=40):
        run_cli(f"--dataset={dataset}", *TINY, *extra, f"--workdir={tmp_path}")
    results = read_results(tmp_path)
    check_results(results, generations=2)
    assert results["dataset"] == dataset
    assert results["data"]["image_shape"] == [32, 32, 3]
    data = results["data"]
    assert (data["num_train"], data["num_val"], data["num_test"]) == sizes


def test_folder_dataset_end_to_end(tmp_path, capsys):
    """With a bad file skipped and a smaller image resized: both said, and kept in results.json."""
    import numpy as np
    from PIL import Image

    write_images(tmp_path / "data" / "train", {"dark": 20, "mid": 20, "bright": 20})
    (tmp_path / "data" / "train" / "mid" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "data" / "train" / "dark" / "small.png")
    run_cli(f"--dataset=folder:{tmp_path / 'data'}", "--skip_bad_images", *TINY, f"--workdir={tmp_path / 'run'}")
    results = read_results(tmp_path / "run")
    check_results(results, generations=2)
    data = results["data"]
    assert data["class_names"] == ["bright", "dark", "mid"]
    assert data["num_train"] + data["num_val"] + data["num_test"] == 61
    assert data["skipped_files"] == ["train/mid/broken.jpg: not an image (content unrecognised)"]
    assert data["image_size"]["resized"] == 1 and data["image_size"]["size"] == [12, 12]
    assert data["channels"]["channels"] == 3
    out = capsys.readouterr().out
    assert "skipped 1 bad file(s) (--skip_bad_images): train/mid/broken.jpg" in out
    assert "resized 1 of 61 images to 12x12" in out


def test_a_workdir_with_results_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert "already holds a run" in refusal(capsys, f"--workdir={tmp_path}")
    assert (tmp_path / "results.json").read_text() == "{}"


def _offline() -> bool:
    import tensorflow_datasets as tfds

    from krefinery.data.sources import unreachable_download_hosts

    return bool(unreachable_download_hosts(tfds.builder("svhn_cropped")))


@pytest.mark.skipif(not _offline(), reason="needs a machine without network")
def test_svhn_offline_fails_fast_with_a_clear_message(tmp_path, capsys):
    line = refusal(capsys, "--dataset=svhn", "--generations=3", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}")
    for part in ("svhn_cropped", "could not be downloaded", "--data_dir", "--dataset=digits"):
        assert part in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "flags").glob("*.flags")))
def test_presets_are_valid_configs(preset):
    import run

    run.FLAGS.unparse_flags()
    run.FLAGS(["run.py", f"--flagfile={ROOT / 'flags' / preset}"])
    config = run.config_from_flags()
    assert config.dataset == preset.removesuffix(".flags").removeprefix("tune_")
    assert run.FLAGS.tune == preset.startswith("tune_")
    if run.FLAGS.tune:
        run.tune_config_from_flags()


def test_prepared_tfds_data_dir_is_read_without_download(tmp_path, monkeypatch):
    """The real TFDS read path (prepared TFRecords in --data_dir), no mocks."""
    import numpy as np
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(16, 16, 3)),
                    "label": tfds.features.ClassLabel(names=["dark", "mid", "bright"]),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(60, seed=0), "test": self._generate_examples(21, seed=1)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for i in range(count):
                image = rng.integers(0, 60, (16, 16, 3)) + 90 * (i % 3)
                yield i, {"image": image.astype(np.uint8), "label": i % 3}

    TinyShapes(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    from krefinery.data import sources as datasets

    def no_download(builder, dataset):
        raise AssertionError(f"{dataset} is prepared; nothing should be downloaded")

    monkeypatch.setattr(datasets, "_download", no_download)
    run_cli("--dataset=tiny_shapes", f"--data_dir={tmp_path / 'tfds'}", *TINY, f"--workdir={tmp_path / 'run'}")
    results = read_results(tmp_path / "run")
    check_results(results, generations=2)
    assert results["data"]["class_names"] == ["dark", "mid", "bright"]
    assert (results["data"]["num_train"], results["data"]["num_val"], results["data"]["num_test"]) == (54, 6, 21)
