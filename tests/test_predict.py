"""`run.py --predict`: image files in, top classes out, from the SavedModel alone."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli, run_subprocess
from krefinery.datasets import load_source
from krefinery.resnet import build_resnet


def write_digits(folder, count=4, rgb_first=True) -> tuple[list[str], np.ndarray]:
    """Real digits test images as PNG files (the first one as RGB); returns paths and pixels."""
    images = next(load_source("digits").test.batch(count).as_numpy_iterator())["image"]
    paths = []
    for index, image in enumerate(images):
        pixels = np.repeat(image, 3, axis=-1) if rgb_first and index == 0 else image
        path = folder / f"digit_{index}.png"
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        paths.append(str(path))
    return paths, images


def test_predict_prints_the_models_classes_for_real_images(digits_run, tmp_path):
    paths, images = write_digits(tmp_path)
    model_dir = digits_run["export_dir"] / "digits"  # A model folder: its highest version is used.
    result = run_subprocess("--predict", f"--model={model_dir}", "--top_k=2", *paths, timeout=120)
    assert result.returncode == 0, result.stderr
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
        ("missing_image", "no such image file"),
        ("not_an_image", "cannot decode as an image"),
        ("wrong_size", "the model takes 8x8 images"),
        ("no_images", "--predict needs image files"),
    ],
)
def test_predict_bad_input_is_one_clear_error(digits_run, tmp_path, capsys, case, message):
    model = digits_run["export_dir"] / "digits" / "1"
    image = tmp_path / "ok.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
    args = {
        "no_model": [f"--model={tmp_path / 'nowhere'}", str(image)],
        "not_saved_model": [f"--model={digits_run['workdir']}", str(image)],
        "missing_image": [f"--model={model}", str(tmp_path / "missing.png")],
        "not_an_image": [f"--model={model}", str(digits_run["workdir"] / "results.json")],
        "wrong_size": [f"--model={model}", str(digits_run["workdir"] / "accuracy.png")],
        "no_images": [f"--model={model}"],
    }[case]
    with pytest.raises(SystemExit) as exit_:
        run_cli("--predict", *args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_predict_errors_reach_the_shell_without_a_traceback(tmp_path):
    result = run_subprocess("--predict", f"--model={tmp_path / 'nowhere'}", "image.png", timeout=120)
    assert result.returncode == 2
    assert "error: --model=" in result.stderr and "Traceback" not in result.stderr
