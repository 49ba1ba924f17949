"""Random-resized crops (`--crop=inception`): the boxes over thousands of draws, one
formula on NumPy, TensorFlow and Keras's backend, and both input paths; evaluation's
centre crop, seen alike by evaluation, offline relabelling and the served export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
from helpers import (
    CHAIN,
    comparable,
    comparable_generation,
    digits_test_batch,
    random_images,
    read_results,
    read_weights,
    run_cli,
    serve,
    write_images,
)

from krefinery.config import KERAS_MODEL_BESIDE_SAVEDMODEL, Crop
from krefinery.core.relabel import RefinedLabels
from krefinery.data import crops
from krefinery.data.memory import InMemoryData, MemoryFeed, MemorySplits
from krefinery.data.pipeline import TFDataFeed, make_augment, make_splits
from krefinery.data.sources import load_source

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


def test_the_centre_view_is_centred_and_keeps_the_share_asked():
    rows, columns = crops.centre_indices(HW, 0.875)  # 42 of 48 rows, 56 of 64 columns.
    assert rows.shape == (48,) and columns.shape == (64,)
    assert sorted(set(rows)) == list(range(3, 45)) and sorted(set(columns)) == list(range(4, 60))
    assert (np.diff(rows) >= 0).all() and (np.diff(columns) >= 0).all()
    assert crops.centre_indices(HW, 1.0) is None
    image = np.arange(48 * 64).reshape(1, 48, 64, 1)
    viewed = crops.view(np, image, crops.centre_indices(HW, 0.5))
    assert viewed[0, 0, 0, 0] == image[0, 12, 16, 0] and viewed[0, -1, -1, 0] == image[0, 35, 47, 0]


CENTRE = Crop("inception", center=0.5)


def feed_on(input_path: str, source):
    if input_path == "memory":
        return MemoryFeed.of(MemorySplits.of(source, 0.25, 0), 16, 0, crop=CENTRE)
    return TFDataFeed(make_splits(source, 0.25, 0), 16, 0, 1, crop=CENTRE)


def batches(data) -> list[dict[str, np.ndarray]]:
    items = data if isinstance(data, tf.data.Dataset) else (data[i] for i in range(data.num_batches))
    return [{key: np.asarray(value) for key, value in batch.items()} for batch in items]


@pytest.mark.parametrize("input_path", ["tfdata", "memory"])
def test_evaluation_and_offline_relabelling_see_the_centre_view(input_path):
    """Validation, test and the training images as evaluated are centre-cropped, and a
    relabel labels that view; training batches are not."""
    source = random_images(num=96, classes=4, shape=(8, 8, 3))
    feed = feed_on(input_path, source)
    view = crops.centre_indices((8, 8), 0.5)
    whole = MemorySplits.of(source, 0.25, 0).val.images
    shown = np.concatenate([b["image"] for b in batches(feed.validation)])
    np.testing.assert_array_equal(shown, crops.view(np, whole, view))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    labeller = RefinedLabels(model, temperature=2.0, alpha=0.0)
    ids, _ = feed.truth()
    images = feed.images(ids)  # The stored training images, whole.
    feed.labels.refine(labeller)
    table = feed.labels.values()
    expected = labeller.of_batch(crops.view(np, images, view), np.zeros(len(ids), np.int32))
    np.testing.assert_allclose(table[ids], expected, atol=1e-6)
    assert not np.allclose(expected, labeller.of_batch(images, np.zeros(len(ids), np.int32)), atol=1e-3)


@pytest.mark.parametrize("input_path", ["tfdata", "memory"])
def test_a_run_with_inception_crops(input_path, tmp_path):
    """Test accuracy is measured on the centre view, and the served export shows the
    classifier that view: its accuracy on the raw test images is the run's."""
    run_cli(*CHAIN, "--crop=inception", "--crop_area=0.5,1", f"--input={input_path}", "--generations=1",
            f"--workdir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'models'}")
    results = read_results(tmp_path / "run")
    config = results["config"]
    assert (config["crop"], config["crop_area"], config["crop_center"]) == ("inception", "0.5,1", 0.875)
    test_accuracy = results["generations"][0]["test_accuracy"]
    assert test_accuracy > 0.5
    test = load_source("digits").test
    served = serve(results["exports"]["best"], test.images)
    assert np.mean(served["class_ids"] == test.labels) == pytest.approx(test_accuracy, abs=1e-6)  # float32 vs float64.
    bare = keras.saving.load_model(f"{results['exports']['best']}/{KERAS_MODEL_BESIDE_SAVEDMODEL}")
    images = digits_test_batch(64)["image"]
    on_view = np.asarray(keras.ops.softmax(bare(crops.view(np, images, crops.centre_indices((8, 8), 0.875)))))
    np.testing.assert_allclose(served["probabilities"][:64], on_view, atol=1e-5)
    assert not np.allclose(on_view, np.asarray(keras.ops.softmax(bare(images))), atol=1e-3)


def test_a_streamed_folder_trains_as_the_folder_held_in_memory(tmp_path):
    """The same chain on a folder held in memory (tf.data) and streamed from its files
    (`--input=stream`, inception crops and centre view on) ends with the same figures."""
    write_images(tmp_path / "data" / "train", {"a": 40, "b": 40, "c": 40}, size=(20, 20))
    results = []
    for input_path in ("tfdata", "stream"):
        run_cli(*CHAIN, f"--dataset=folder:{tmp_path / 'data'}", "--crop=inception", f"--input={input_path}",
                f"--workdir={tmp_path / input_path}", f"--export_dir={tmp_path / 'models' / input_path}")
        results.append(read_results(tmp_path / input_path))
    held, streamed = results
    assert (held["runtime"]["input"], streamed["runtime"]["input"]) == ("tfdata", "stream")
    for result in results:  # The keys hash the input path, so each run has its own.
        result["runtime"].pop("input"), result["config"].pop("input")
        result["generations"] = [comparable_generation(g, "key") for g in result["generations"]]
    assert comparable(streamed) == comparable(held) and len(held["generations"]) == 2
    for generation in (1, 2):
        weights = [read_weights(tmp_path / path / f"gen_{generation}.weights.h5") for path in ("tfdata", "stream")]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            np.testing.assert_array_equal(weights[0][name], weights[1][name])
