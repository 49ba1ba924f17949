"""`run.py --predict`: image files in, top classes out, from the SavedModel alone."""

import importlib.util
import platform

import numpy as np
import pytest
import tensorflow as tf
from helpers import digits_test_batch, refusal, run_cli, run_subprocess
from PIL import Image

from krefinery.core.resnet import build_resnet
from krefinery.runtime import device


def write_digits(folder, count=4, rgb_first=True) -> tuple[list[str], np.ndarray]:
    """Real digits test images as PNG files (the first one as RGB); returns paths and pixels."""
    images = digits_test_batch(count)["image"]
    paths = []
    for index, image in enumerate(images):
        pixels = np.repeat(image, 3, axis=-1) if rgb_first and index == 0 else image
        path = folder / f"digit_{index}.png"
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        paths.append(str(path))
    return paths, images


def test_predict_prints_the_models_classes_for_real_images(digits_run, tmp_path):
    """Also the exit 0 smoke test: `python run.py --predict` in a real process, as a shell
    runs it (the other tests of run.py run in this process). Started without the tests'
    own oneDNN switch (conftest), it loads TensorFlow with oneDNN's kernels on x86-64
    (`device.prefer_onednn`), which TensorFlow's start-up line says at log level 0."""
    paths, images = write_digits(tmp_path)
    model_dir = digits_run["export_dir"] / "digits"  # A model folder: its highest version is used.
    result = run_subprocess(
        "--predict", f"--model={model_dir}", "--top_k=2", *paths,
        env={"TF_CPP_MIN_LOG_LEVEL": "0"}, unset=(device.ONEDNN_ENV,), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "oneDNN custom operations are on" in result.stderr
    lines = result.stdout.strip().splitlines()

    classifier = build_resnet((8, 8, 1), 10, depth=8, precision=digits_run["results"]["runtime"]["precision"])
    classifier.load_weights(digits_run["workdir"] / f"gen_{digits_run['results']['best_generation']}.weights.h5")
    probabilities = tf.nn.softmax(classifier(images, training=False)).numpy()
    assert len(lines) == len(paths)
    for line, path, row in zip(lines, paths, probabilities):
        top = np.argsort(-row)[:2]
        assert line == f"{path}: {top[0]} ({row[top[0]]:.4f}), {top[1]} ({row[top[1]]:.4f})"


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_model", "no such file or folder"),
        ("not_saved_model", "is not a SavedModel"),
        ("missing_image", "missing.png: no such file."),
        ("not_an_image", "results.json: not an image (content unrecognised)."),
        ("colour_for_grey_model", "has colour, but the model was trained on greyscale images"),
        ("no_images", "--predict needs image files"),
    ],
)
def test_predict_bad_input_is_one_clear_error(digits_run, tmp_path, capsys, case, message):
    model = digits_run["export_dir"] / "digits" / "1"
    image = tmp_path / "ok.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
    colour = tmp_path / "colour.png"
    colour.write_bytes(tf.io.encode_png(np.full((8, 8, 3), [200, 10, 10], np.uint8)).numpy())
    args = {
        "no_model": [f"--model={tmp_path / 'nowhere'}", str(image)],
        "not_saved_model": [f"--model={digits_run['workdir']}", str(image)],
        "missing_image": [f"--model={model}", str(tmp_path / "missing.png")],
        "not_an_image": [f"--model={model}", str(digits_run["workdir"] / "results.json")],
        "colour_for_grey_model": [f"--model={model}", str(colour)],
        "no_images": [f"--model={model}"],
    }[case]
    assert message in refusal(capsys, "--predict", *args)


def test_predict_refuses_probabilities_that_are_not_finite(tmp_path, capsys):
    """A model whose weights are NaN (a diverged one, exported by hand) answers NaN: that
    is no prediction, and the line names the model."""
    from krefinery.outputs.export import export_classifier

    classifier = build_resnet((8, 8, 1), 10, depth=8)
    classifier.set_weights([np.full_like(w, np.nan) for w in classifier.get_weights()])
    version = export_classifier(classifier, [str(c) for c in range(10)], (8, 8, 1), tmp_path / "models", "nan")
    image = tmp_path / "ok.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
    line = refusal(capsys, "--predict", f"--model={version}", str(image))
    assert f"--model={version}: its probabilities for 1 image(s)" in line and "not finite" in line


def test_a_backend_that_is_not_installed_is_one_line():
    """KERAS_BACKEND names a backend whose package is missing (PyTorch is not installed in
    the project's test environment, or an unknown name): one line, exit 2, before Keras
    can fail with a traceback."""
    for backend, message in (("torch", "needs the Python package 'torch'"), ("nope", "is not a Keras backend krefinery trains on")):
        if backend == "torch" and importlib.util.find_spec("torch") is not None:
            continue  # Installed here: nothing is missing.
        result = run_subprocess("--predict", env={"KERAS_BACKEND": backend}, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert lines == [lines[0]] and f"KERAS_BACKEND={backend} " in lines[0] and message in lines[0]
        assert "Traceback" not in result.stderr


def test_predict_resizes_other_sizes_as_training_does_and_says_so(digits_run, tmp_path, capsys):
    """A 16x16 image of a digit gives what its 8x8 version (resized by the same rules) gives."""
    from krefinery.data import images

    paths, _ = write_digits(tmp_path, count=1, rgb_first=False)
    large = tmp_path / "large.png"
    pixels = np.asarray(Image.open(paths[0]).resize((16, 16), Image.Resampling.NEAREST))
    Image.fromarray(pixels).save(large)
    model = digits_run["export_dir"] / "digits"
    run_cli("--predict", f"--model={model}", str(large))
    out, err = capsys.readouterr()
    assert err.strip() == f"note: resized 1 image(s) to 8x8 (HxW), the model's input size (first: {large})."
    small = tmp_path / "small.png"
    Image.fromarray(images.read_pixels(large, (8, 8, 1))[..., 0]).save(small)
    run_cli("--predict", f"--model={model}", str(small))
    assert capsys.readouterr().out.split(":", 1)[1] == out.split(":", 1)[1]


def test_predict_uses_the_highest_complete_version_and_says_so(digits_run, tmp_path, capsys):
    import shutil

    model = tmp_path / "digits"
    shutil.copytree(digits_run["export_dir"] / "digits" / "1", model / "1")
    (model / "2" / "variables").mkdir(parents=True)  # A copy stopped half-way.
    shutil.copy(digits_run["export_dir"] / "digits" / "1" / "saved_model.pb", model / "2")
    (model / "3").mkdir()
    paths, _ = write_digits(tmp_path, count=1)
    run_cli("--predict", f"--model={model}", *paths)
    out, err = capsys.readouterr()
    assert err.strip() == (
        f"note: --model={model}: skipped incomplete version(s) 3, 2 (no saved_model.pb or "
        "variables); using version 1."
    )
    assert out.startswith(f"{paths[0]}: ")
    shutil.rmtree(model / "1")
    line = refusal(capsys, "--predict", f"--model={model}", *paths)
    assert "none of its versions (2, 3) is a complete SavedModel" in line
