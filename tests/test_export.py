"""SavedModel export: TF Serving layout, a signature a fresh process can serve, atomic versions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import digits_test_batch, refusal

from krefinery.config import Config
from krefinery.core.resnet import build_resnet
from krefinery.errors import UserError
from krefinery.outputs import export

SERVE_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](images=tf.constant(images))
print(json.dumps({key: value.numpy().tolist() for key, value in out.items()}, default=bytes.decode))
"""


def test_best_and_every_generation_are_exported_in_serving_layout(digits_run):
    results, models = digits_run["results"], digits_run["export_dir"]
    assert results["exports"] == {
        "gen_1": str(models / "digits_gen1" / "1"),
        "gen_2": str(models / "digits_gen2" / "1"),
        "best": str(models / "digits" / "1"),
    }
    for path in results["exports"].values():
        assert (Path(path) / "saved_model.pb").is_file()
    assert sorted(p.name for p in models.iterdir()) == ["digits", "digits_gen1", "digits_gen2"]
    assert [p.name for p in (models / "digits").iterdir()] == ["1"]  # No temporary folder left.


def test_a_fresh_process_serves_the_same_probabilities_as_the_trained_model(digits_run, tmp_path):
    results = digits_run["results"]
    best = results["best_generation"]
    images = digits_test_batch(32)["image"]
    np.save(tmp_path / "images.npy", images)
    served = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, results["exports"]["best"], str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=120, check=True,
    )
    outputs = json.loads(served.stdout.strip().splitlines()[-1])

    # The run's own precision: a float32 rebuild of a bfloat16-trained model differs.
    classifier = build_resnet((8, 8, 1), 10, depth=8, precision=results["runtime"]["precision"])
    classifier.load_weights(digits_run["workdir"] / f"gen_{best}.weights.h5")
    expected = tf.nn.softmax(classifier(images, training=False)).numpy()
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert outputs["class_ids"] == expected.argmax(-1).tolist()
    class_names = results["data"]["class_names"]
    assert outputs["class_names"] == [class_names[i] for i in expected.argmax(-1)]


def test_saved_model_cli_lists_the_serving_signature(digits_run):
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run(
        [str(cli), "show", "--dir", digits_run["results"]["exports"]["best"], "--tag_set", "serve",
         "--signature_def", "serving_default"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    for part in ("inputs['images']", "DT_UINT8", "(-1, 8, 8, 1)", "outputs['probabilities']", "DT_FLOAT",
                 "(-1, 10)", "outputs['class_ids']", "DT_INT32", "outputs['class_names']", "DT_STRING"):
        assert part in shown, shown


@pytest.fixture(scope="module")
def small_classifier():
    return build_resnet((8, 8, 1), 3, depth=8)


def test_exporting_twice_makes_versions_1_and_2(small_classifier, tmp_path):
    (tmp_path / "m" / "not_a_version").mkdir(parents=True)  # Ignored, as TF Serving does.
    first = export.export_classifier(small_classifier, "abc", (8, 8, 1), tmp_path, "m")
    second = export.export_classifier(small_classifier, "abc", (8, 8, 1), tmp_path, "m")
    assert (first, second) == (tmp_path / "m" / "1", tmp_path / "m" / "2")
    assert export.versions(tmp_path / "m") == [1, 2]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "not_a_version"]


def test_a_crash_mid_export_leaves_no_version_and_no_leftovers(small_classifier, tmp_path, monkeypatch):
    def crash(module, path, signatures=None):
        (Path(path) / "saved_model.pb").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        export.export_classifier(small_classifier, "abc", (8, 8, 1), tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []
    monkeypatch.undo()
    assert export.export_classifier(small_classifier, "abc", (8, 8, 1), tmp_path, "m") == tmp_path / "m" / "1"


def test_a_version_taken_meanwhile_is_never_overwritten(small_classifier, tmp_path, monkeypatch):
    save = tf.saved_model.save

    def save_while_another_writer_takes_version_1(module, path, signatures=None):
        save(module, path, signatures=signatures)
        (tmp_path / "m" / "1").mkdir()
        (tmp_path / "m" / "1" / "saved_model.pb").write_bytes(b"someone else's")

    monkeypatch.setattr(tf.saved_model, "save", save_while_another_writer_takes_version_1)
    assert export.export_classifier(small_classifier, "abc", (8, 8, 1), tmp_path, "m") == tmp_path / "m" / "2"
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_bytes() == b"someone else's"


@pytest.mark.parametrize(
    "dataset, name",
    [("digits", "digits"), ("svhn", "svhn"), ("folder:/data/my pets/", "my_pets"), ("cifar10:3.0.2", "cifar10_3.0.2")],
)
def test_default_export_name_comes_from_the_dataset(dataset, name):
    assert export.default_export_name(dataset) == name


@pytest.mark.parametrize("bad", ["../up", ".hidden", "a/b", ""])
def test_bad_export_names_are_user_errors(bad):
    with pytest.raises(UserError, match="--export_name"):
        Config(export_name=bad)


def test_an_unusable_export_dir_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    line = refusal(capsys, f"--export_dir={tmp_path / 'file'}", f"--workdir={tmp_path / 'run'}")
    assert line.startswith("error: --export_dir=")
    assert not (tmp_path / "run").exists()
