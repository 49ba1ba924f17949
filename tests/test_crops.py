"""Random-resized crops (`--crop=inception`): the boxes over thousands of draws, one
formula on NumPy, TensorFlow and Keras's backend, and both input paths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
from helpers import CHAIN, read_results, run_cli

from krefinery.config import Crop
from krefinery.data import crops
from krefinery.data.memory import InMemoryData
from krefinery.data.pipeline import make_augment

HW = (48, 64)


def draws(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, crops.TRIES)), rng.random((count, crops.TRIES)), rng.random((count, 2))


@pytest.mark.parametrize("area, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.25, 0.5), (1 / 2, 2.0))])
def test_boxes_stay_inside_and_cover_the_configured_ranges(area, ratio):
    top, left, height, width = crops.boxes(np, *draws(20_000), HW, area, ratio)
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= HW[0]).all() and (left + width <= HW[1]).all()
    whole = (height == HW[0]) & (width == HW[1])
    assert whole.mean() < 0.01  # The fallback to the whole image is rare.
    tried = ~whole
    # Rounding to whole pixels moves a side by at most half a pixel.
    slack = (height + width + 0.5) / 2 / (HW[0] * HW[1])
    share = height * width / (HW[0] * HW[1])
    assert (share[tried] >= area[0] - slack[tried]).all() and (share[tried] <= area[1] + slack[tried]).all()
    h, w = height[tried], width[tried]
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    # The draws reach both ends of the area range.
    span = area[1] - area[0]
    assert np.quantile(share[tried], 0.01) < area[0] + 0.05 * span and share[tried].max() > area[1] - 0.05 * span


def test_one_formula_on_numpy_tensorflow_and_keras():
    given = draws(500, seed=1)
    expected = crops.boxes(np, *given, HW, (0.08, 1.0), (3 / 4, 4 / 3))
    on_tf = crops.boxes(tnp, *(tf.constant(d) for d in given), HW, (0.08, 1.0), (3 / 4, 4 / 3))
    on_keras = crops.boxes(keras.ops, *(keras.ops.convert_to_tensor(d, "float64") for d in given), HW, (0.08, 1.0), (3 / 4, 4 / 3))
    for ours, tfs, kerases in zip(expected, on_tf, on_keras):
        np.testing.assert_array_equal(ours, np.asarray(tfs))
        np.testing.assert_array_equal(ours, np.asarray(kerases))


IMAGES = np.arange(6 * 8, dtype=np.uint8).reshape(1, 6, 8, 1).repeat(16, axis=0)
WHOLE = Crop("inception", (1.0, 1.0), (8 / 6, 8 / 6))  # Every crop is the whole image.


def on_tfdata(crop: Crop) -> np.ndarray:
    augment = make_augment((6, 8, 1), False, crop)
    return augment({"image": tf.constant(IMAGES)}, tf.constant([3, 4], tf.int64))["image"].numpy()


def on_device(crop: Crop) -> np.ndarray:
    data = InMemoryData(IMAGES, np.arange(16) % 2, 2, crop=crop)
    return np.asarray(data.batches(16, seed=0)[0]["image"])


@pytest.mark.parametrize("path", [on_tfdata, on_device])
def test_both_paths_crop_by_gathering_pixels(path):
    """A crop of the whole image is the image; a smaller one is made of its pixels,
    nearest neighbour, rows and columns in order (a block of the original, stretched)."""
    np.testing.assert_array_equal(path(WHOLE), IMAGES)
    cropped = path(Crop("inception", (0.25, 0.5)))
    assert cropped.dtype == np.uint8 and cropped.shape == IMAGES.shape
    assert not np.array_equal(cropped, IMAGES)
    rows, columns = cropped[..., 0] // 8, cropped[..., 0] % 8
    assert (np.diff(rows, axis=1) >= 0).all() and (np.diff(columns, axis=2) >= 0).all()
    assert (rows == rows[:, :, :1]).all() and (columns == columns[:, :1, :]).all()


@pytest.mark.parametrize("input_path", ["tfdata", "memory"])
def test_a_run_with_inception_crops(input_path, tmp_path):
    run_cli(*CHAIN, "--crop=inception", "--crop_area=0.5,1", f"--input={input_path}", "--generations=1",
            f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    results = read_results(tmp_path / "run")
    assert results["config"]["crop"] == "inception" and results["config"]["crop_area"] == "0.5,1"
    assert results["generations"][0]["test_accuracy"] > 0.5
