import numpy as np
import pytest
from helpers import mocked_tfds, write_images

from krefinery.data import sources as datasets
from krefinery.data.pipeline import make_splits
from krefinery.data.sources import load_source
from krefinery.errors import UserError


def test_digits_is_the_real_bundled_dataset_split_80_20():
    source = load_source("digits")  # Arrays: read without TensorFlow.
    train, test = source.train, source.test
    assert (len(train.labels), len(test.labels)) == (1437, 360) and train.images.shape[0] == 1437
    assert source.image_shape == (8, 8, 1) and source.num_classes == 10
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    test_labels = np.bincount(test.labels)
    assert test_labels.min() >= 35  # Stratified: every digit is in the test split.
    assert not source.flip_safe


def test_folder_with_train_only_carves_test_from_train(tmp_path):
    write_images(tmp_path / "train", {"cat": 10, "dog": 12, "owl": 8})
    source = load_source(f"folder:{tmp_path}")
    assert source.class_names == ("cat", "dog", "owl")
    assert source.image_shape == (12, 12, 3) and source.test is None
    labels = sorted(source.train.labels.tolist())
    assert labels == [0] * 10 + [1] * 12 + [2] * 8
    splits = make_splits(source, val_fraction=0.1, seed=0)
    assert (splits.num_train, splits.num_val, splits.num_test) == (24, 3, 3)


def test_reading_a_folder_shows_counts_and_time_left_in_a_log(tmp_path, monkeypatch, capsys):
    """Where stdout is a log file (--verbose=2), long reading prints a line with the count
    and the time left every PROGRESS_INTERVAL seconds (here 0, so at every file) and one
    at its end; reading that ends sooner prints none, as does --verbose=0."""
    from krefinery import progress

    write_images(tmp_path / "train", {"a": 3, "b": 3})
    write_images(tmp_path / "test", {"b": 2})
    titles = ("checking image files", "reading train/", "reading test/")
    load_source(f"folder:{tmp_path}", verbose=2)
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith(titles)]
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.0)
    load_source(f"folder:{tmp_path}", verbose=0)
    assert capsys.readouterr().out == ""
    load_source(f"folder:{tmp_path}", verbose=2)
    lines = capsys.readouterr().out.splitlines()
    for title, unit, total in (("checking image files", "files", 8), ("reading train/", "images", 6), ("reading test/", "images", 2)):
        mine = [line for line in lines if line.startswith(f"{title}: ")]
        counts = [line.split(": ", 1)[1].split(f" {unit}")[0] for line in mine]
        assert counts == [f"{done}/{total}" for done in range(1, total + 1)], mine
        assert all("s so far, about" in line and line.endswith(" s left") for line in mine[:-1])
        assert mine[-1].endswith(" s") and f"{total}/{total} {unit} in " in mine[-1]
    # --verbose=1: Keras's own bar under each title, as fit's epochs have it.
    load_source(f"folder:{tmp_path}", verbose=1)
    out = capsys.readouterr().out
    assert all(f"{title}:\n" in out for title in titles)
    assert "8/8" in out and "6/6" in out and "2/2" in out


def test_folder_test_split_and_resizing(tmp_path):
    write_images(tmp_path / "train", {"a": 3, "b": 3})
    write_images(tmp_path / "test", {"b": 2}, size=(20, 16))
    source = load_source(f"folder:{tmp_path}")
    assert source.test.labels.tolist() == [1, 1]  # Class ids follow train's folders.
    assert source.test.images.shape == (2, 12, 12, 3)


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, "no such folder"),
        ({}, "expected class folders"),
        ({"train/only": 3}, "at least 2"),
        ({"train/a": 0, "train/b": 0}, "train/a/ holds no image files"),
        ({"train/a": 2, "train/b": 2, "test/zebra": 1}, "do not appear in train"),
    ],
)
def test_bad_folders_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for folder, count in layout.items():
            (root / folder).mkdir(parents=True)
            if count:
                write_images(root / folder.split("/")[0], {folder.split("/")[1]: count})
    with pytest.raises(UserError, match=message):
        load_source(f"folder:{root}")


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(UserError, match="unknown --dataset=no_such_dataset"):
        load_source("no_such_dataset")


def test_svhn_extra_needs_svhn():
    with pytest.raises(UserError, match="--svhn_extra only applies"):
        load_source("cifar10", svhn_extra=True)


def test_unprepared_tfds_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "unreachable_download_hosts", lambda builder: ["ufldl.stanford.edu"])
    with pytest.raises(UserError) as error:
        load_source("svhn", data_dir=str(tmp_path))
    message = str(error.value)
    for part in ("svhn_cropped", "not prepared", "could not be downloaded", "--data_dir", "--dataset=digits"):
        assert part in message


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def refuse(self, *args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(datasets, "unreachable_download_hosts", lambda builder: [])
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    with pytest.raises(UserError, match="ConnectionError: connection refused"):
        load_source("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "name, tfds_name, flip", [("svhn", "svhn_cropped", False), ("cifar10", "cifar10", True)]
)
def test_tfds_sources_from_mock_data(name, tfds_name, flip):
    with mocked_tfds(num_examples=12):
        source = load_source(name)
        examples = list(source.train.as_numpy_iterator())
        assert len(examples) == 12 and len(list(source.test)) == 12
    assert source.image_shape == (32, 32, 3) and source.num_classes == 10
    assert source.flip_safe is flip
    assert examples[0]["image"].dtype == np.uint8


def test_svhn_extra_trains_on_train_plus_extra():
    import tensorflow_datasets as tfds

    requested = []
    with mocked_tfds(num_examples=4), pytest.MonkeyPatch.context() as patch:
        mocked = tfds.core.DatasetBuilder.as_dataset

        def spy(self, split=None, **kwargs):
            requested.append(split)
            return mocked(self, split=split, **kwargs)

        patch.setattr(tfds.core.DatasetBuilder, "as_dataset", spy)
        load_source("svhn", svhn_extra=True)
    assert requested == ["train+extra", "test"]


def test_image_size_resizes_digits_as_a_folders_files_are_resized(capsys):
    """`--image_size` on arrays: Pillow's bilinear resize, the folders' rule, said once."""
    from PIL import Image

    plain, larger = load_source("digits"), load_source("digits", image_size=(16, 12))
    assert "every image resized from 8x8 to 16x12 (--image_size)" in capsys.readouterr().out
    assert larger.image_shape == (16, 12, 1) and larger.train.images.shape[1:] == (16, 12, 1)
    assert larger.test.images.shape[1:] == (16, 12, 1)
    expected = np.asarray(Image.fromarray(plain.train.images[5, ..., 0]).resize((12, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(larger.train.images[5, ..., 0], expected)
    np.testing.assert_array_equal(larger.train.labels, plain.train.labels)
    assert larger.notes["image_size"] == {"size": [16, 12], "chosen": "--image_size", "from": [8, 8]}
    same = load_source("digits", image_size=(8, 8))  # Its own size: nothing to do or say.
    assert "image_size" not in same.notes and np.array_equal(same.train.images, plain.train.images)


def test_image_size_resizes_a_tfds_split_as_it_is_read():
    with mocked_tfds(num_examples=6):
        plain = load_source("cifar10")
        larger = load_source("cifar10", image_size=(40, 48))
        assert larger.image_shape == (40, 48, 3)
        for split, source in ((larger.train, plain.train), (larger.test, plain.test)):
            (big, label), (small, same) = [
                (example["image"].numpy(), example["label"].numpy()) for example in (next(iter(split)), next(iter(source)))
            ]
            assert big.shape == (40, 48, 3) and big.dtype == np.uint8 and label == same
            # A bilinear resize keeps the picture: the mean brightness moves by rounding only.
            assert abs(float(big.mean()) - float(small.mean())) < 2.0


def test_a_tfds_dataset_of_varying_sizes_needs_and_takes_image_size():
    """tf_flowers' photos differ in size: refused without --image_size (one line), each
    resized as it is read with it; photos of things may be flipped."""
    with mocked_tfds(num_examples=5):
        with pytest.raises(UserError, match=r"varying size \(None, None, 3\); pass --image_size=HxW"):
            load_source("tf_flowers")
        source = load_source("tf_flowers", image_size=(24, 20))
        shapes = [example["image"].shape for example in source.train.as_numpy_iterator()]
    assert shapes == [(24, 20, 3)] * 5 and source.image_shape == (24, 20, 3)
    assert source.notes["image_size"]["from"] == "varying" and source.flip_safe


def test_a_streamed_folder_holds_no_pixels_and_decodes_what_memory_held(tmp_path):
    """`--input=stream`: the splits are files, checked at the start and decoded as read,
    to the very pixels, ids and labels of the folder held in memory."""
    write_images(tmp_path / "train", {"a": 9, "b": 7}, size=(10, 14))
    write_images(tmp_path / "test", {"a": 2, "b": 3}, size=(12, 12), seed=1)
    held = load_source(f"folder:{tmp_path}", image_size=(12, 12))
    streamed = load_source(f"folder:{tmp_path}", image_size=(12, 12), stream=True)
    assert isinstance(streamed.train, datasets.Files) and len(streamed.train.files) == 16
    for splits in (make_splits(held, 0.25, 3), make_splits(streamed, 0.25, 3)):
        examples = {name: list(getattr(splits, name).as_numpy_iterator()) for name in ("train", "val", "test")}
        if splits.decode is None:
            expected = examples
            continue
        for name, split in examples.items():
            assert [e["id"] for e in split] == [e["id"] for e in expected[name]]
            assert [e["label"] for e in split] == [e["label"] for e in expected[name]]
            np.testing.assert_array_equal([e["image"] for e in split], [e["image"] for e in expected[name]])
