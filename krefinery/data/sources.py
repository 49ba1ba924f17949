"""Where images come from: TFDS datasets, scikit-learn's digits, or a folder of class folders.

Every source yields examples `{"image": uint8 [H, W, C], "label": int}` in a fixed
order, so that an example's position is a stable id (see `pipeline.py`). Digits and
folders are read into arrays without TensorFlow; a TFDS dataset is a tf.data stream.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from krefinery.data import images
from krefinery.errors import UserError
from krefinery.progress import Progress

if TYPE_CHECKING:
    import tensorflow as tf

# Short names users type, mapped to TFDS names.
TFDS_ALIASES = {"svhn": "svhn_cropped"}
# Datasets whose labels survive a horizontal flip: photos of things. Digits and house
# numbers do not.
FLIP_SAFE = {
    "cifar10", "cifar100", "fashion_mnist",
    "imagenet2012", "imagenet2012_subset", "imagenet_resized", "imagenette", "imagenet_v2",
    "tf_flowers", "oxford_flowers102", "oxford_iiit_pet", "stanford_dogs", "food101", "caltech101", "cats_vs_dogs",
}
READABLE = "png, jpeg, gif, bmp, webp"
PARALLEL_PIXELS = 256 * 256  # Images this large are decoded in threads.
OFFLINE_HINT = "run offline with --dataset=digits"


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A split held in memory: uint8 images `[n, H, W, C]` and integer labels `[n]`."""

    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Files:
    """A split left on disk (`--input=stream`): image files under `root` (relative paths)
    and their labels, each decoded to `shape` by `images.read_pixels` whenever it is read,
    so a dataset larger than memory (ImageNet's) can train."""

    root: str
    files: tuple[str, ...]
    labels: np.ndarray
    shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class TFDSStream:
    """How a streamed TFDS dataset's records become examples: `decode` turns a record
    `{"encoded", ...}` into `{"image", ...}` in tf.data (as TFDS would have decoded it, then
    resized where asked), and `train_range(start, stop)` reads the training split's
    records `start..stop-1` without reading those before them (TFDS's split slicing),
    so that a shuffle can take them a block at a time."""

    decode: Callable[[dict[str, Any]], dict[str, Any]]
    train_range: Callable[[int, int], Any]


@dataclasses.dataclass(frozen=True)
class Source:
    """A labelled image dataset in a fixed order, before validation is carved out.

    A split is `Arrays` (digits, folders), `Files` (a folder streamed) or a
    `tf.data.Dataset` of examples (TFDS; of records, where `stream` is set).
    """

    name: str
    train: Arrays | Files | tf.data.Dataset
    test: Arrays | Files | tf.data.Dataset | None  # None: carve the test split from train.
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    flip_safe: bool = False
    # The training split's labels in order, where known without reading the images: it
    # lets the splits keep every class in training (see `splits.assign_roles`).
    labels: np.ndarray | None = None
    # What was decided about the data (skipped files, resizing, channels): results.json.
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A TFDS dataset streamed (`--input=stream`): its splits are records whose image is
    # still encoded, as TFDS stores it.
    stream: TFDSStream | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_source(
    dataset: str,
    data_dir: str | None = None,
    svhn_extra: bool = False,
    skip_bad_images: bool = False,
    image_size: tuple[int, int] | None = None,
    verbose: int = 0,
    stream: bool = False,
) -> Source:
    """Resolves `--dataset`: `digits`, `folder:PATH`, or a TFDS name (or alias).
    `verbose`: how a folder's reading shows its progress (`krefinery.progress`); `stream`:
    a folder's splits stay on disk as `Files`, a TFDS dataset's images stay encoded."""
    if dataset.startswith("folder:"):
        return folder(dataset[len("folder:") :], skip_bad_images, image_size, verbose, stream)
    if dataset == "digits":
        source = digits()
    else:
        if svhn_extra and TFDS_ALIASES.get(dataset, dataset) != "svhn_cropped":
            raise UserError("--svhn_extra only applies to --dataset=svhn.")
        source = tfds_source(dataset, data_dir=data_dir, extra=svhn_extra, sized=image_size is not None, stream=stream)
    return source if image_size is None else resized(source, image_size)


def resized(source: Source, image_size: tuple[int, int]) -> Source:
    """`source` with every image resized to `image_size` (`--image_size` on a dataset of
    one size) by the folders' rule: bilinear, rounded back to uint8. Arrays are resized
    now, by Pillow as folders' files are; a TFDS split as it is read, in tf.data."""
    height, width = image_size
    old = source.image_shape
    if (height, width) == old[:2]:
        return source
    varying = None in old[:2]
    notes = {
        **source.notes,
        "image_size": {"size": [height, width], "chosen": "--image_size", "from": "varying" if varying else list(old[:2])},
    }
    before = "images of varying size" if varying else f"{old[0]}x{old[1]}"
    print(f"--dataset={source.name}: every image resized from {before} to {height}x{width} (--image_size)", flush=True)

    def one(example: dict[str, Any]) -> dict[str, Any]:
        import tensorflow as tf

        pixels = tf.image.resize(example["image"], image_size, method="bilinear", antialias=True)
        return {**example, "image": tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)}

    def resize(split: Arrays | Any) -> Arrays | Any:
        if split is None:
            return None
        if isinstance(split, Arrays):
            return Arrays(images.resize_all(split.images, image_size), split.labels)
        return split.map(one)

    shape = (height, width, old[2])
    if source.stream is not None:  # Streamed: each image is resized as it is decoded.
        decode = source.stream.decode
        stream = dataclasses.replace(source.stream, decode=lambda record: one(decode(record)))
        return dataclasses.replace(source, stream=stream, image_shape=shape, notes=notes)
    return dataclasses.replace(source, train=resize(source.train), test=resize(source.test), image_shape=shape, notes=notes)


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
    return Source(
        name="digits",
        train=Arrays(x_train, y_train),
        test=Arrays(x_test, y_test),
        class_names=tuple(str(n) for n in bunch.target_names),
        image_shape=(8, 8, 1),
        labels=y_train,
    )


def folder(
    path: str,
    skip_bad_images: bool = False,
    image_size: tuple[int, int] | None = None,
    verbose: int = 0,
    stream: bool = False,
) -> Source:
    """Images in `PATH/train/<class>/*`, and `PATH/test/<class>/*` when that exists.

    Every file is read in full here, before anything trains, so a bad file anywhere
    costs one error line (or, with `skip_bad_images`, is left out and reported), never
    a generation. With `stream`, the pixels are not kept: the splits are `Files`, read
    again as they train, and memory holds none of them. Mixed files become one shape by visible rules (see `krefinery.data.images`):
    RGB if any training image has colour, else grey; the most common training size, or
    `image_size`. What was decided is printed and kept in `Source.notes`. Reading shows
    its progress as `verbose` asks (`krefinery.progress`): at ImageNet's million files it
    takes minutes.
    """
    where = f"--dataset=folder:{path}"
    if not path:
        raise UserError("--dataset=folder: needs a path, e.g. --dataset=folder:/data/pets.")
    root = os.path.expanduser(path)
    if not os.path.isdir(root):
        raise UserError(f"{where}: no such folder.")
    if not os.path.isdir(os.path.join(root, "train")):
        raise UserError(
            f"{where}: expected class folders under {os.path.join(root, 'train')} "
            f"(PATH/train/<class>/*: {READABLE})."
        )
    not_read = [
        name + "/" if os.path.isdir(os.path.join(root, name)) else name
        for name in _entries(root, where)
        if name not in ("train", "test")
    ]
    train = _list_split(root, "train", where, not_read)
    if len(train.class_names) < 2:
        raise UserError(
            f"{where}: found {len(train.class_names)} class folder(s) with images in "
            f"{os.path.join(root, 'train')}; a classifier needs at least 2."
        )
    test = None
    if os.path.isdir(os.path.join(root, "test")):
        test = _list_split(root, "test", where, not_read)
        unknown = sorted(set(test.class_names) - set(train.class_names))
        if unknown:
            raise UserError(f"{where}: test classes {unknown} do not appear in train/.")
        index = {name: i for i, name in enumerate(train.class_names)}
        test = dataclasses.replace(
            test,
            class_names=train.class_names,
            labels=[index[test.class_names[label]] for label in test.labels],
        )
    files = train.files + (test.files if test else [])
    bad: dict[str, str] = {}
    headers = _read_headers(root, files, bad, verbose)
    train_headers = [headers[f] for f in train.files if f in headers]
    if not train_headers:
        raise UserError(f"{where}: {_describe_bad(bad)}; no training image is readable.")
    shape, notes = _choose_shape(train_headers, list(headers.values()), image_size)
    if not stream:
        _check_memory(where, len(headers), shape)
    train_images, train_labels, train_files = _decode(root, train, headers, shape, bad, "reading train/", verbose, stream)
    test_arrays = _decode(root, test, headers, shape, bad, "reading test/", verbose, stream) if test else None
    if bad and not skip_bad_images:
        raise UserError(
            f"{where}: {_describe_bad(bad)}. Fix or remove {'it' if len(bad) == 1 else 'them'}, "
            "or pass --skip_bad_images to train without."
        )
    _check_classes(where, train, train_labels)
    if test:
        _check_classes(where, test, test_arrays[1])
    notes = {"skipped_files": [f"{f}: {r}" for f, r in sorted(bad.items())], **notes, "not_read": not_read}
    total = len(train_labels) + (len(test_arrays[1]) if test_arrays else 0)
    lines = _note_lines(notes, shape, total)
    if stream:
        lines.append(f"{total} images checked; each is decoded again whenever it is read (--input=stream)")
    for line in lines:
        print(f"{where}: {line}", flush=True)

    def split(pixels: np.ndarray | None, labels: np.ndarray, files: tuple[str, ...]) -> Arrays | Files:
        return Files(root, files, labels, shape) if stream else Arrays(pixels, labels)

    return Source(
        name=f"folder:{path}",
        train=split(train_images, train_labels, train_files),
        test=split(*test_arrays) if test_arrays else None,
        class_names=tuple(train.class_names),
        image_shape=shape,
        labels=train_labels,
        notes=notes,
    )


@dataclasses.dataclass(frozen=True)
class _Split:
    """One split's image files (relative to the dataset root) and class ids."""

    class_names: list[str]
    files: list[str]
    labels: list[int]


def _entries(directory: str, where: str) -> list[str]:
    """The folder's entries, sorted, less hidden files and file-manager metadata."""
    try:
        return sorted(name for name in os.listdir(directory) if not images.is_ignored(name))
    except OSError as error:
        raise UserError(f"{where}: cannot read {directory}: {error.strerror}.") from None


def _list_split(root: str, split: str, where: str, not_read: list[str]) -> _Split:
    """Class folders of `root/split`. Every other entry is named in `not_read`."""
    names, files, labels = [], [], []
    for entry in _entries(os.path.join(root, split), where):
        relative = f"{split}/{entry}"
        problem = images.link_problem(os.path.join(root, relative))
        if problem:  # Meant as a class folder, perhaps: never passed over without a word.
            raise UserError(f"{where}: {relative}: {problem}; fix or remove it.")
        if not os.path.isdir(os.path.join(root, relative)):
            not_read.append(relative)  # Not in a class folder: it has no label.
            continue
        class_files = []
        for name in _entries(os.path.join(root, relative), where):
            if os.path.isdir(os.path.join(root, relative, name)):
                not_read.append(f"{relative}/{name}/")
            else:
                class_files.append(f"{relative}/{name}")
        if not class_files:
            raise UserError(
                f"{where}: {relative}/ holds no image files; add images or remove the folder."
            )
        labels += [len(names)] * len(class_files)
        files += class_files
        names.append(entry)
    return _Split(names, files, labels)


def _read_headers(root: str, files: list[str], bad: dict[str, str], verbose: int) -> dict[str, images.Header]:
    """Headers of the readable files; the others go into `bad` with what is wrong."""
    headers = {}
    with Progress("checking image files", len(files), verbose, unit="file") as progress:
        for name in files:
            progress.add()
            problem = images.link_problem(os.path.join(root, name))
            if problem:
                bad[name] = problem
                continue
            if not images.has_image_suffix(name):
                suffix = os.path.splitext(name)[1] or "no extension"
                bad[name] = f"unsupported file type ({suffix}; krefinery reads {READABLE})"
                continue
            try:
                headers[name] = images.read_header(os.path.join(root, name))
            except images.BadImage as error:
                bad[name] = str(error)
    return headers


def _choose_shape(
    train: list[images.Header], every: list[images.Header], image_size: tuple[int, int] | None
) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """One `(height, width, channels)` for every image, and what it takes to get there."""
    sizes = collections.Counter(header.size for header in train)
    if image_size is None:
        # The most common size; among equally common ones, the largest.
        height, width = max(sizes, key=lambda s: (sizes[s], s[0] * s[1], s))
    else:
        height, width = image_size
    channels = 3 if any(header.colour for header in train) else 1
    notes = {
        "image_size": {
            "size": [height, width],
            "chosen": "--image_size" if image_size else "most common training size",
            "resized": sum(header.size != (height, width) for header in every),
            "training_sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
        },
        "channels": {
            "channels": channels,
            "grey_read_as_rgb": sum(not h.colour for h in every) if channels == 3 else 0,
            "colour_read_as_grey": sum(h.colour for h in every) if channels == 1 else 0,
            "alpha_dropped": sum(h.alpha for h in every),
        },
        "converted": {
            "16_bit_to_8_bit": sum(h.wide for h in every),
            "exif_rotated": sum(h.rotated for h in every),
            "animated_first_frame": sum(h.animated for h in every),
        },
    }
    return (height, width, channels), notes


def _check_memory(where: str, count: int, shape: tuple[int, int, int]) -> None:
    """Decoded images are held in memory (and cached once more): refuse what cannot fit."""
    needed = 2 * count * math.prod(shape)
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if needed > available // 2:
        height, width, _ = shape
        raise UserError(
            f"{where}: {count} images of {height}x{width} take {needed / 2**30:.1f} GiB in "
            f"memory, more than half of this machine's {available / 2**30:.1f} GiB; pass a "
            "smaller --image_size=HxW, or --input=stream to decode them from the files as they are read."
        )


def _decode(
    root: str,
    split: _Split,
    headers: dict[str, images.Header],
    shape: tuple[int, int, int],
    bad: dict[str, str],
    title: str,
    verbose: int,
    check_only: bool = False,
) -> tuple[np.ndarray | None, np.ndarray, tuple[str, ...]]:
    """A split's images decoded to `shape` (in threads: Pillow decodes without the GIL),
    straight into one array (None with `check_only`: each is decoded and let go), their
    labels and files; files that fail go into `bad`.
    """
    readable = [(name, label) for name, label in zip(split.files, split.labels) if name in headers]
    batch = None if check_only else np.empty((len(readable), *shape), np.uint8)

    def read(index: int) -> str | None:
        try:
            pixels = images.read_pixels(os.path.join(root, readable[index][0]), shape)
        except images.BadImage as error:
            return str(error)
        if batch is not None:
            batch[index] = pixels
        return None

    # Threads pay for large images only: for small ones the GIL hand-offs cost more than
    # the decoding they overlap.
    largest = max((headers[name].height * headers[name].width for name, _ in readable), default=0)
    errors = []
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(Progress(title, len(readable), verbose))
        if largest >= PARALLEL_PIXELS and (os.cpu_count() or 1) > 1:
            pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(os.cpu_count()))
            results = pool.map(read, range(len(readable)), chunksize=16)
        else:
            results = map(read, range(len(readable)))
        for error in results:
            errors.append(error)
            progress.add()
    for (name, _), error in zip(readable, errors):
        if error is not None:
            bad[name] = error
    failed = np.asarray([error is not None for error in errors], bool)
    labels = np.asarray([label for _, label in readable], np.int64)[~failed]
    files = tuple(name for (name, _), bad_file in zip(readable, failed) if not bad_file)
    if batch is not None and failed.any():
        batch = batch[~failed]
    return batch, labels, files


def _check_classes(where: str, split: _Split, labels: np.ndarray) -> None:
    """Every class a split lists keeps at least one image, after bad files are left out."""
    for label in sorted(set(split.labels) - set(labels.tolist())):
        folder = next(name for name, l in zip(split.files, split.labels) if l == label)
        raise UserError(
            f"{where}: every file in {folder.rsplit('/', 1)[0]}/ is bad, so that class has no images."
        )


def _describe_bad(bad: dict[str, str]) -> str:
    """The first bad files and what is wrong with each, in one line."""
    shown = [f"{name}: {reason}" for name, reason in sorted(bad.items())[:3]]
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return f"{len(bad)} bad file{'s' if len(bad) > 1 else ''}: " + "; ".join(shown) + more


def _note_lines(notes: dict[str, Any], shape: tuple[int, int, int], total: int) -> list[str]:
    """What was decided about the files, as log lines; nothing when there is nothing to say."""
    lines = []
    skipped = notes["skipped_files"]
    if skipped:
        shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        lines.append(f"skipped {len(skipped)} bad file(s) (--skip_bad_images): {shown}")
    size = notes["image_size"]
    if size["resized"]:
        found = ", ".join(f"{s} x{n}" for s, n in size["training_sizes"].items())
        lines.append(
            f"resized {size['resized']} of {total} images to {shape[0]}x{shape[1]} "
            f"({size['chosen']}; training sizes: {found}); --image_size=HxW picks another"
        )
    channels = notes["channels"]
    if channels["grey_read_as_rgb"]:
        lines.append(
            f"{channels['grey_read_as_rgb']} greyscale image(s) read as RGB (grey copied to 3 "
            "channels), since training images have colour"
        )
    if channels["colour_read_as_grey"]:
        lines.append(
            f"{channels['colour_read_as_grey']} colour test image(s) read as grey, since every "
            "training image is greyscale"
        )
    if channels["alpha_dropped"]:
        lines.append(f"alpha channel dropped from {channels['alpha_dropped']} image(s)")
    converted = {key: n for key, n in notes["converted"].items() if n}
    if converted:
        lines.append("also: " + ", ".join(f"{key.replace('_', ' ')}: {n}" for key, n in converted.items()))
    if notes["not_read"]:
        lines.append(
            "not read (outside PATH/train/<class>/ and PATH/test/<class>/): "
            + ", ".join(notes["not_read"][:5])
            + (f" and {len(notes['not_read']) - 5} more" if len(notes["not_read"]) > 5 else "")
        )
    return lines


def tfds_source(
    dataset: str, data_dir: str | None = None, extra: bool = False, sized: bool = False, stream: bool = False
) -> Source:
    """A TFDS dataset with `image` and `label` features, downloaded and prepared if needed.
    Images of varying size (ImageNet's, say) need `sized`: `--image_size`, which `resized`
    applies to each example as it is read; their `image_shape` is `(None, None, C)` here.
    With `stream`, the splits hold each image as TFDS stored it (`"encoded"`), and
    `Source.stream` says how to decode it and how to read a range of the training split."""
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
    if len(shape) != 3 or shape[2] is None:
        raise UserError(
            f"--dataset={dataset}: TFDS {name} has images of shape {shape}; krefinery reads "
            "images of a known channel count (HxWxC)."
        )
    if None in shape and not sized:
        raise UserError(
            f"--dataset={dataset}: TFDS {name} has images of varying size {shape}; pass "
            "--image_size=HxW to resize every image to one size as it is read."
        )
    if not builder.is_prepared():
        _download(builder, dataset)
    splits = builder.info.splits
    train_split = "train+extra" if extra else "train"
    # Unprepared (mocked) builders list no splits: assume the usual train/test pair.
    has_test = not splits or "test" in splits

    def read(split: str) -> Any:
        if not stream:
            ds = builder.as_dataset(split=split, shuffle_files=False)
            return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: {"encoded": ex["image"], "label": ex["label"]})

    def decode(record: dict[str, Any]) -> dict[str, Any]:
        kept = {key: value for key, value in record.items() if key != "encoded"}
        return {**kept, "image": features["image"].decode_example(record["encoded"])}

    if stream:
        print(f"--dataset={dataset}: images kept encoded, each decoded whenever it is read (--input=stream)", flush=True)
    return Source(
        name=dataset,
        train=read(train_split),
        test=read("test") if has_test else None,
        class_names=tuple(features["label"].names),
        image_shape=tuple(None if side is None else int(side) for side in shape),
        flip_safe=name in FLIP_SAFE,
        stream=TFDSStream(decode, lambda start, stop: read(_split_range(splits, train_split, start, stop))) if stream else None,
    )


def _split_range(splits: Any, split: str, start: int, stop: int) -> str:
    """TFDS's name for examples `start..stop-1` of `split` (`train`, or `train+extra`,
    whose parts follow each other)."""
    parts = split.split("+")
    if len(parts) == 1:
        return f"{split}[{start}:{stop}]"
    pieces, offset = [], 0
    for name in parts:
        size = splits[name].num_examples
        first, last = max(start - offset, 0), min(stop - offset, size)
        if first < last:
            pieces.append(f"{name}[{first}:{last}]")
        offset += size
    return "+".join(pieces)


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
