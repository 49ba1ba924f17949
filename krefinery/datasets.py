"""Where images come from: TFDS datasets, scikit-learn's digits, or a folder of class folders.

Every source yields examples `{"image": uint8 [H, W, C], "label": int}` in a fixed
order, so that an example's position is a stable id (see `pipeline.py`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse

import numpy as np
import tensorflow as tf

from krefinery.errors import UserError

# Short names users type, mapped to TFDS names.
TFDS_ALIASES = {"svhn": "svhn_cropped"}
# Datasets whose labels survive a horizontal flip. Digits and house numbers do not.
FLIP_SAFE = {"cifar10", "cifar100", "fashion_mnist"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OFFLINE_HINT = "run offline with --dataset=digits"


@dataclasses.dataclass(frozen=True)
class Source:
    """A labelled image dataset in a fixed order, before validation is carved out."""

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset | None  # None: carve the test split from train.
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    flip_safe: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_source(dataset: str, data_dir: str | None = None, svhn_extra: bool = False) -> Source:
    """Resolves `--dataset`: `digits`, `folder:PATH`, or a TFDS name (or alias)."""
    if dataset == "digits":
        return digits()
    if dataset.startswith("folder:"):
        return folder(dataset[len("folder:") :])
    if svhn_extra and TFDS_ALIASES.get(dataset, dataset) != "svhn_cropped":
        raise UserError("--svhn_extra only applies to --dataset=svhn.")
    return tfds_source(dataset, data_dir=data_dir, extra=svhn_extra)


def digits() -> Source:
    """scikit-learn's 1,797 real 8x8 digits, as uint8, with a fixed stratified 80/20 split.

    Bundled with scikit-learn, so it needs no download: the offline default.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )

    def as_dataset(x, y):
        return tf.data.Dataset.from_tensor_slices({"image": x, "label": y})

    return Source(
        name="digits",
        train=as_dataset(x_train, y_train),
        test=as_dataset(x_test, y_test),
        class_names=tuple(str(n) for n in bunch.target_names),
        image_shape=(8, 8, 1),
    )


def folder(path: str) -> Source:
    """Images in `PATH/train/<class>/*`, and `PATH/test/<class>/*` when that exists.

    Every image is decoded to the size and channel count of the first training image.
    """
    root = os.path.expanduser(path)
    if not path:
        raise UserError("--dataset=folder: needs a path, e.g. --dataset=folder:/data/pets.")
    if not os.path.isdir(root):
        raise UserError(f"--dataset=folder:{path}: no such folder.")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise UserError(
            f"--dataset=folder:{path}: expected class folders under {train_dir} "
            "(PATH/train/<class>/*.png|jpg)."
        )
    class_names, train_files, train_labels = _list_images(train_dir, path)
    if len(class_names) < 2:
        raise UserError(
            f"--dataset=folder:{path}: found {len(class_names)} class folder(s) with images "
            f"in {train_dir}; a classifier needs at least 2."
        )
    image_shape = _probe_image(train_files[0])
    test = None
    test_dir = os.path.join(root, "test")
    if os.path.isdir(test_dir):
        test_names, test_files, test_labels = _list_images(test_dir, path)
        unknown = sorted(set(test_names) - set(class_names))
        if unknown:
            raise UserError(
                f"--dataset=folder:{path}: test classes {unknown} do not appear in train/."
            )
        index = {name: i for i, name in enumerate(class_names)}
        test_labels = [index[test_names[label]] for label in test_labels]
        test = _decode_files(test_files, test_labels, image_shape)
    return Source(
        name=f"folder:{path}",
        train=_decode_files(train_files, train_labels, image_shape),
        test=test,
        class_names=tuple(class_names),
        image_shape=image_shape,
    )


def _list_images(directory: str, path: str) -> tuple[list[str], list[str], list[int]]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as error:
        raise UserError(f"--dataset=folder:{path}: cannot read {directory}: {error.strerror}.")
    names, files, labels = [], [], []
    for entry in entries:
        class_dir = os.path.join(directory, entry)
        if not os.path.isdir(class_dir):
            continue
        try:
            images = sorted(
                f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_SUFFIXES)
            )
        except OSError as error:
            raise UserError(f"--dataset=folder:{path}: cannot read {class_dir}: {error.strerror}.")
        if not images:
            continue
        labels += [len(names)] * len(images)
        files += [os.path.join(class_dir, f) for f in images]
        names.append(entry)
    if not files:
        raise UserError(
            f"--dataset=folder:{path}: no .png or .jpg images in class folders under {directory}."
        )
    return names, files, labels


def _probe_image(filename: str) -> tuple[int, int, int]:
    try:
        with open(filename, "rb") as handle:
            image = tf.io.decode_image(handle.read(), expand_animations=False)
    except (OSError, tf.errors.InvalidArgumentError) as error:
        raise UserError(f"cannot decode {filename} as an image: {error}") from None
    height, width, channels = image.shape
    return int(height), int(width), 1 if channels == 1 else 3


def _decode_files(files: list[str], labels: list[int], shape: tuple[int, int, int]):
    height, width, channels = shape

    def decode(filename, label):
        image = tf.io.decode_image(
            tf.io.read_file(filename), channels=channels, expand_animations=False
        )
        image = tf.image.resize(image, (height, width))
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image.set_shape(shape)
        return {"image": image, "label": label}

    dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64)))
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def tfds_source(dataset: str, data_dir: str | None = None, extra: bool = False) -> Source:
    """A TFDS dataset with `image` and `label` features, downloaded and prepared if needed."""
    import tensorflow_datasets as tfds

    name = TFDS_ALIASES.get(dataset, dataset)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"unknown --dataset={dataset}: it is not 'digits', 'folder:PATH' or a TFDS "
            f"dataset name (aliases: {', '.join(sorted(TFDS_ALIASES))})."
        ) from None
    features = builder.info.features
    if not (
        "image" in features
        and "label" in features
        and isinstance(features["image"], tfds.features.Image)
        and isinstance(features["label"], tfds.features.ClassLabel)
    ):
        raise UserError(
            f"--dataset={dataset}: TFDS {name} has no 'image' and class 'label' features, "
            "so it is not an image classification dataset."
        )
    shape = tuple(features["image"].shape)
    if None in shape or len(shape) != 3:
        raise UserError(
            f"--dataset={dataset}: TFDS {name} has images of varying size {shape}; "
            "krefinery needs fixed-size images."
        )
    if not builder.is_prepared():
        _download(builder, dataset)
    splits = builder.info.splits
    train_split = "train+extra" if extra else "train"
    # Unprepared (mocked) builders list no splits: assume the usual train/test pair.
    has_test = not splits or "test" in splits

    def read(split: str) -> tf.data.Dataset:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})

    return Source(
        name=dataset,
        train=read(train_split),
        test=read("test") if has_test else None,
        class_names=tuple(features["label"].names),
        image_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        flip_safe=name in FLIP_SAFE,
    )


def _download(builder, dataset: str) -> None:
    """Prepares a TFDS dataset, failing fast and clearly when the network is unreachable.

    TFDS retries each download with backoff for minutes; a DNS check of the download
    hosts first turns the common offline case into an immediate, actionable error.
    """
    def fail(reason: str) -> UserError:
        return UserError(
            f"--dataset={dataset}: TFDS {builder.name} is not prepared in {builder.data_dir} "
            "and could not "
            f"be downloaded ({reason}). Prepare it where there is network (e.g. `tfds build "
            f"{builder.name} --data_dir=DIR`) and pass --data_dir=DIR, or {OFFLINE_HINT}."
        )

    offline = unreachable_download_hosts(builder)
    if offline:
        raise fail(f"cannot resolve {', '.join(offline)}: no network")
    try:
        builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001 - any failure here means "not available".
        raise fail(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from None


def unreachable_download_hosts(builder) -> list[str]:
    """The builder's download hosts, if none of them resolves; [] if any does (or none known)."""
    urls = builder.url_infos or {}
    hosts = sorted(filter(None, {urllib.parse.urlparse(url).hostname for url in urls}))
    unreachable = []
    for host in hosts:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            unreachable.append(host)
    return unreachable if unreachable and len(unreachable) == len(hosts) else []
