"""`--input=stream` on a TFDS dataset: records kept encoded, decoded as read, and a
shuffle that reads its blocks as ranges of the split; the same examples, in the same
order, as the split cached in memory. On a real prepared TFDS dataset (TFDS's mock data
does not slice splits): a tiny one made here, offline, of photos of varying size."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import (
    CHAIN,
    comparable,
    comparable_generation,
    read_results,
    read_weights,
    run_cli,
)

from krefinery.data.pipeline import make_splits, onehot_table, training_dataset
from krefinery.data.sources import load_source


class KrefineryTinyImages(tfds.core.GeneratorBasedBuilder):
    """60 training and 12 test images of 3 brightness classes, each of its own size."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=["dark", "mid", "light"])}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 60), "test": self._generate_examples(1, 12)}

    def _generate_examples(self, seed: int, count: int):
        rng = np.random.default_rng(seed)
        for i in range(count):
            height, width = rng.integers(16, 40, 2)
            image = (rng.integers(0, 40, (height, width, 3)) + 80 * (i % 3)).astype(np.uint8)
            yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("krefinery_tiny_images", data_dir=folder).download_and_prepare()
    return folder


def both(data_dir: str):
    """The dataset cached (tf.data) and streamed, split alike."""
    options = dict(data_dir=data_dir, image_size=(24, 20))
    held, streamed = load_source("krefinery_tiny_images", **options), load_source("krefinery_tiny_images", stream=True, **options)
    assert held.stream is None and streamed.stream is not None
    return make_splits(held, 0.2, 5), make_splits(streamed, 0.2, 5)


def examples(dataset: tf.data.Dataset) -> list[dict[str, np.ndarray]]:
    return list(dataset.as_numpy_iterator())


def test_a_streamed_tfds_split_decodes_the_examples_it_would_have_cached(data_dir):
    held, streamed = both(data_dir)
    assert streamed.decode is not None and streamed.image_shape == held.image_shape == (24, 20, 3)
    record = next(iter(streamed.train_records))
    assert record["encoded"].dtype == tf.string and "image" not in record  # Encoded until read.
    for name in ("train", "val", "test"):
        mine, theirs = examples(getattr(streamed, name)), examples(getattr(held, name))
        assert [e["id"] for e in mine] == [e["id"] for e in theirs] and len(mine) > 0
        assert [e["label"] for e in mine] == [e["label"] for e in theirs]
        np.testing.assert_array_equal(np.stack([e["image"] for e in mine]), np.stack([e["image"] for e in theirs]))


@pytest.mark.parametrize("shuffle_buffer", [48, 10])  # One block; five blocks of up to 10.
def test_a_streamed_epoch_reads_its_blocks_as_ranges_and_equals_the_cached_one(data_dir, shuffle_buffer):
    held, streamed = both(data_dir)
    epochs = []
    for splits in (held, streamed):
        table = onehot_table(splits.train, splits.num_ids, splits.num_classes, records=splits.train_records)
        batches = training_dataset(
            splits.train_records, table, 8, seed=3, shuffle_buffer=shuffle_buffer, epochs=2,
            decode=splits.decode, train_block=splits.train_block,
        )
        epochs.append(examples(batches))
    assert len(epochs[0]) == len(epochs[1]) == 2 * -(-held.num_train // 8)
    for mine, theirs in zip(*epochs):
        np.testing.assert_array_equal(mine["id"], theirs["id"])
        np.testing.assert_array_equal(mine["image"], theirs["image"])
        np.testing.assert_array_equal(mine["target"], theirs["target"])
    # The first epoch: every training example once, shuffled.
    ids = np.concatenate([batch["id"] for batch in epochs[1][: len(epochs[1]) // 2]])
    assert sorted(ids) == sorted(e["id"] for e in examples(held.train_records))
    assert not np.array_equal(ids, np.sort(ids))


def test_a_run_streamed_from_tfds_trains_as_the_cached_one(data_dir, tmp_path):
    """The whole chain, `--input=stream` against `--input=tfdata`: the same figures and
    weights (the store keys differ: they name the input path)."""
    results = []
    for input_path in ("tfdata", "stream"):
        run_cli(*CHAIN, "--dataset=krefinery_tiny_images", f"--data_dir={data_dir}", "--image_size=24x24",
                "--crop=inception", f"--input={input_path}", f"--workdir={tmp_path / input_path}",
                f"--export_dir={tmp_path / 'models' / input_path}")
        results.append(read_results(tmp_path / input_path))
    assert [r["runtime"]["input"] for r in results] == ["tfdata", "stream"]
    for result in results:
        result["runtime"].pop("input"), result["config"].pop("input")
        result["generations"] = [comparable_generation(g, "key") for g in result["generations"]]
    assert comparable(results[0]) == comparable(results[1])
    for generation in (1, 2):
        weights = [read_weights(tmp_path / path / f"gen_{generation}.weights.h5") for path in ("tfdata", "stream")]
        for name in weights[0]:
            np.testing.assert_array_equal(weights[0][name], weights[1][name])


def test_a_range_of_a_joined_split_names_the_parts_that_hold_it():
    """`--svhn_extra` trains on `train+extra`: a block's range is cut into each part's."""
    from types import SimpleNamespace

    from krefinery.data.sources import _split_range

    splits = {"train": SimpleNamespace(num_examples=10), "extra": SimpleNamespace(num_examples=30)}
    assert _split_range(splits, "train", 3, 7) == "train[3:7]"
    assert _split_range(splits, "train+extra", 2, 8) == "train[2:8]"
    assert _split_range(splits, "train+extra", 8, 15) == "train[8:10]+extra[0:5]"
    assert _split_range(splits, "train+extra", 12, 40) == "extra[2:30]"
