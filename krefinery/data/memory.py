"""Data held on the device as arrays: batches made there, no TensorFlow, no input pipeline.

The images, their labels and the label table live on the accelerator as backend tensors
(the table as a Keras variable, so relabelling writes it in place). Each training batch
is made there by one compiled function written with `keras.ops`: the epoch's
permutation sliced at the step, the images, labels and targets gathered by example id,
and the random translation (and flip) of `pipeline.make_augment`, drawn from a hash of
(seed, generation, epoch, step). Batches reach Keras's `fit` through a
`keras.utils.PyDataset` whose items are those device tensors, which Keras's JAX data
adapter passes through untouched: this path's only traffic from the host per step is
two scalars. So the step runs `Trainer.compute_loss` as every other path does, with no
CPU input pipeline to wait for.

`MemoryFeed` is this path's `feed.Feed`: `run.py --input=memory` trains the durable
chain on it, and `chain.runner.train_chain` trains one from arrays in a few lines.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from krefinery.config import Crop
from krefinery.core.relabel import INFERENCE_BATCH_SIZE, RefinedLabels
from krefinery.data import crops
from krefinery.data.feed import DataInfo
from krefinery.data.sources import Arrays, Source
from krefinery.data.splits import TEST, TRAIN, VAL, source_roles, steps_per_epoch
from krefinery.errors import UserError
from krefinery.progress import Progress

Tensor = Any  # A backend tensor.


class DeviceLabelTable:
    """The `[num_ids, classes]` label table as a Keras variable beside in-memory images.

    `LabelRefinery`'s and the chain's table for `InMemoryData`; rows of ids that are not
    training examples stay 0. Relabelling runs the labeller over chunks sliced from the
    device images (each seen through evaluation's `view`), and assigns the result to the
    variable.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        ids: np.ndarray,
        num_ids: int,
        num_classes: int,
        view: crops.View = None,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ):
        self._images, self._labels, self._ids = images, labels, ids
        self._batch_size = batch_size
        self._view = None if view is None else functools.partial(crops.view, ops, indices=view)
        self._truth = np.zeros((num_ids, num_classes), np.float32)
        self._truth[ids, ops.convert_to_numpy(labels)] = 1.0
        self.variable = keras.Variable(self._truth, trainable=False, dtype="float32", name="training_labels")

    @property
    def size(self) -> int:
        return len(self._ids)

    def refine(self, labeller: RefinedLabels, progress: Progress | None = None) -> None:
        self.variable.assign(self.labelled(labeller, progress))

    def values(self) -> np.ndarray:
        return np.array(ops.convert_to_numpy(self.variable.value))

    def labelled(self, labeller: RefinedLabels, progress: Progress | None = None) -> np.ndarray:
        table = self.values()
        table[self._ids] = labeller.of_arrays(
            self._images, self._labels, self._batch_size, progress=progress, view=self._view
        )
        return table

    def reset(self) -> None:
        self.variable.assign(self._truth)


class InMemoryData:
    """Training images (`uint8 [n, H, W, C]`) and labels (`int [0, classes)`), on the device.

    `flip`: whether a horizontal mirror is a valid augmentation (photos yes, digits no);
    `crop`: translation, or random-resized crops (`data.crops`). `ids`: each image's
    example id (default: its position) among `num_ids`, the ids the label table is
    indexed by. `batches(...)` makes a generation's training batches for
    `fit`; `labels` is the table a chain refines, relabelling in batches of
    `evaluation_batch(n)` (`runtime.distribute.Replication.evaluation_batch`).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int | None = None,
        flip: bool = False,
        ids: np.ndarray | None = None,
        num_ids: int | None = None,
        crop: Crop = Crop(),
        evaluation_batch: Callable[[int], int] = lambda count: INFERENCE_BATCH_SIZE,
    ):
        images, labels, classes = _checked(images, labels, num_classes)
        self.num_examples = len(images)
        self.num_classes = classes
        self.image_shape: tuple[int, int, int] = tuple(int(d) for d in images.shape[1:])
        self.flip = flip
        self.ids = np.arange(self.num_examples) if ids is None else np.asarray(ids, np.int64)
        # The host's arrays, as given (not copied): what figures and label images read.
        self.host_images, self.host_labels = images, labels
        self.images = ops.convert_to_tensor(images)
        self.ground_truth = ops.convert_to_tensor(labels)
        self._ids = ops.convert_to_tensor(self.ids.astype(np.int32))
        self.num_ids = self.num_examples if num_ids is None else num_ids
        self.view = crops.centre_indices(self.image_shape[:2], crop.center)
        self.labels = DeviceLabelTable(
            self.images, self.ground_truth, self.ids, self.num_ids, classes, self.view,
            evaluation_batch(self.num_examples),
        )
        self._order = _compiled(_permutation, static=("count",))
        self._batch = _compiled(
            functools.partial(_make_batch, pad=_pad(self.image_shape), flip=flip, crop=crop),
            static=("size", "augment"),
        )

    def steps_per_epoch(self, batch_size: int, multiple_of: int = 1) -> int:
        return steps_per_epoch(self.num_examples, batch_size, multiple_of)

    def batches(
        self,
        batch_size: int,
        seed: int,
        generation: int = 1,
        augment: bool = True,
        initial_epoch: int = 0,
        multiple_of: int = 1,
    ) -> keras.utils.PyDataset:
        """Generation `generation`'s batches from epoch `initial_epoch` on, one endless
        stream: pass `steps_per_epoch` and `shuffle=False` to `fit`. Epoch e is the same
        batches whenever it is made (see `Batches`). With `multiple_of` (the devices that
        share each batch), each epoch's last batch is cut to a multiple of it."""
        return Batches(self, batch_size, seed, generation, augment, initial_epoch, multiple_of)

    def order(self, seed: int, generation: int, epoch: int) -> Tensor:
        """The positions of an epoch's examples, in the order it visits them."""
        key = ops.convert_to_tensor(np.int32(_key(seed, generation, epoch, 0)))
        return self._order(key, count=self.num_examples)

    def batch(
        self, order: Tensor, start: int, size: int, key: int, augment: bool
    ) -> dict[str, Tensor]:
        """`{"id", "image", "label", "target"}` of the examples at `order[start:start + size]`."""
        return self._batch(
            self.images,
            self.ground_truth,
            self._ids,
            self.labels.variable.value,
            order,
            ops.convert_to_tensor(np.int32(start)),
            ops.convert_to_tensor(np.int32(key)),
            size=size,
            augment=augment,
        )


class Batches(keras.utils.PyDataset):
    """Training batches for `fit`, made on the device (see `InMemoryData.batches`).

    Item i is step i % steps of epoch initial_epoch + i // steps; its order and
    augmentation come from (seed, generation, epoch, step) alone, and its targets
    from the label table as it is when the item is made.
    """

    def __init__(
        self,
        data: InMemoryData,
        batch_size: int,
        seed: int,
        generation: int,
        augment: bool,
        initial_epoch: int,
        multiple_of: int = 1,
    ):
        super().__init__()  # One worker: items are dispatched to the device, not computed here.
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.generation, self.augment, self.initial_epoch = generation, augment, initial_epoch
        self.multiple_of = multiple_of
        self.steps = data.steps_per_epoch(batch_size, multiple_of)
        self._epoch_order: tuple[int, Tensor] | None = None

    @property
    def num_batches(self) -> None:
        return None  # Endless: `fit`'s epochs and steps_per_epoch say how much to read.

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        epoch, step = divmod(int(index), self.steps)
        epoch += self.initial_epoch
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, self.data.order(self.seed, self.generation, epoch))
        start = step * self.batch_size
        size = min(self.batch_size, self.data.num_examples - start)
        size -= size % self.multiple_of
        key = _key(self.seed, self.generation, epoch, 1 + step)
        return self.data.batch(self._epoch_order[1], start, size, key, self.augment)


class EvaluationBatches(keras.utils.PyDataset):
    """Un-augmented `{"image", "label"}` batches of arrays, in order, for `evaluate` and
    `fit`'s `validation_data`, each image as evaluation's `view` shows it; the arrays
    are put on the device once."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = INFERENCE_BATCH_SIZE,
        view: crops.View = None,
    ):
        super().__init__()
        images, labels, _ = _checked(images, labels, None)
        self.images, self.labels = ops.convert_to_tensor(images), ops.convert_to_tensor(labels)
        self.batch_size, self.view = batch_size, view

    @property
    def num_batches(self) -> int:
        return -(-int(self.images.shape[0]) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {"image": crops.view(ops, self.images[rows], self.view), "label": self.labels[rows]}


@dataclasses.dataclass(frozen=True)
class MemorySplits:
    """A source's train, validation and test splits as arrays, carved as the tf.data
    path carves them (`splits.source_roles`); `train_ids` are the training examples' ids."""

    train: Arrays
    train_ids: np.ndarray
    val: Arrays
    test: Arrays
    info: DataInfo

    @classmethod
    def of(cls, source: Source, val_fraction: float, seed: int) -> MemorySplits:
        train = _arrays(source.train)
        roles = source_roles(source, len(train.labels), val_fraction, seed)

        def subset(role: int) -> Arrays:
            return Arrays(train.images[roles == role], train.labels[roles == role])

        test = subset(TEST) if source.test is None else _arrays(source.test)
        val = subset(VAL)
        return cls(
            train=subset(TRAIN),
            train_ids=np.flatnonzero(roles == TRAIN),
            val=val,
            test=test,
            info=DataInfo(
                num_ids=len(roles),
                num_train=int(np.sum(roles == TRAIN)),
                num_val=len(val.labels),
                num_test=len(test.labels),
                class_names=source.class_names,
                image_shape=source.image_shape,
                flip_safe=source.flip_safe,
                notes=source.notes,
            ),
        )


class MemoryFeed:
    """A chain's data held on the device (`feed.Feed`): `InMemoryData` for training,
    `EvaluationBatches` for the rest. Batches differ from the tf.data path's (another
    random stream), so a run's store keys say which path trained it."""

    def __init__(
        self,
        data: InMemoryData,
        validation: Arrays,
        test: Arrays,
        info: DataInfo,
        batch_size: int,
        seed: int,
        augment: bool = True,
        multiple_of: int = 1,
        evaluation_batch: Callable[[int], int] = lambda count: INFERENCE_BATCH_SIZE,
    ):
        self.data, self.info, self.labels = data, info, data.labels
        self.batch_size, self.seed, self.augment, self.multiple_of = batch_size, seed, augment, multiple_of
        self.steps_per_epoch = data.steps_per_epoch(batch_size, multiple_of)
        self._evaluation_batch = evaluation_batch
        self.validation = EvaluationBatches(*_pair(validation), evaluation_batch(len(validation.labels)), data.view)
        self.test = EvaluationBatches(*_pair(test), evaluation_batch(len(test.labels)), data.view)

    @classmethod
    def of_arrays(
        cls, data: InMemoryData, validation: tuple[np.ndarray, np.ndarray], batch_size: int, seed: int, **options
    ) -> MemoryFeed:
        """The feed of arrays at hand (a library user's): `validation` (images, labels)
        scores each epoch and stands in for the test split; classes are named by number."""
        held_out = Arrays(*_checked(*validation, data.num_classes)[:2])
        info = DataInfo(
            num_ids=data.num_ids,
            num_train=data.num_examples,
            num_val=len(held_out.labels),
            num_test=len(held_out.labels),
            class_names=tuple(str(c) for c in range(data.num_classes)),
            image_shape=data.image_shape,
            flip_safe=data.flip,
        )
        return cls(data, held_out, held_out, info, batch_size, seed, **options)

    @classmethod
    def of(
        cls,
        splits: MemorySplits,
        batch_size: int,
        seed: int,
        crop: Crop = Crop(),
        evaluation_batch: Callable[[int], int] = lambda count: INFERENCE_BATCH_SIZE,
        **options,
    ) -> MemoryFeed:
        """The feed of a source's splits, its training images cropped as `crop` says, each
        set evaluated (and the training set relabelled) in `evaluation_batch(count)`;
        `options`: `__init__`'s other keyword arguments."""
        info = splits.info
        data = InMemoryData(
            splits.train.images,
            splits.train.labels,
            info.num_classes,
            flip=info.flip_safe,
            ids=splits.train_ids,
            num_ids=info.num_ids,
            crop=crop,
            evaluation_batch=evaluation_batch,
        )
        return cls(data, splits.val, splits.test, info, batch_size, seed, evaluation_batch=evaluation_batch, **options)

    def training(self, generation: int, initial_epoch: int = 0) -> keras.utils.PyDataset:
        return self.data.batches(
            self.batch_size, self.seed, generation, self.augment, initial_epoch, self.multiple_of
        )

    def train_unaugmented(self) -> EvaluationBatches:
        data = self.data
        return EvaluationBatches(data.host_images, data.host_labels, self._evaluation_batch(data.num_examples), data.view)

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.ids, self.data.host_labels

    def images(self, ids: np.ndarray) -> np.ndarray:
        position = {int(i): n for n, i in enumerate(self.data.ids)}
        return self.data.host_images[[position[int(i)] for i in ids]]


def _arrays(examples: Any) -> Arrays:
    """A source's split as arrays; a TFDS split (tf.data) is read once."""
    if isinstance(examples, Arrays):
        return examples
    from krefinery.data.pipeline import (
        to_arrays,  # TFDS is TensorFlow's: so is reading it.
    )

    return to_arrays(examples)


def _pair(arrays: Arrays) -> tuple[np.ndarray, np.ndarray]:
    return arrays.images, arrays.labels


def _checked(
    images: np.ndarray, labels: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The arrays as the device takes them (labels as int32) and the class count; what
    cannot be taken as it is raises `UserError`, rather than being converted."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or not len(images):
        raise UserError(
            f"images must be uint8 [count > 0, height, width, channels]; got {images.dtype} "
            f"{list(images.shape)}. Add a channel axis (images[..., None]) or convert to uint8."
        )
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"labels must be integers, one per image ({len(images)}); got {labels.dtype} "
            f"{list(labels.shape)}."
        )
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= classes:
        raise UserError(f"labels must lie in [0, {classes}); got {labels.min()}..{labels.max()}.")
    return images, labels.astype(np.int32), classes


# --- The compiled pieces: keras.ops only, so every backend runs the same batches. ---


def _compiled(function: Callable, static: tuple[str, ...]) -> Callable:
    """`function` compiled for the backend in use; the `static` keyword arguments are
    fixed per trace (shapes and switches). PyTorch runs it eagerly."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function, static_argnames=static)
    if backend == "tensorflow":
        import tensorflow as tf

        # Python values of the static arguments make tf.function trace once per value.
        return tf.function(function, jit_compile=True)
    return function


def _key(*parts: int) -> int:
    """A 32-bit seed from non-negative integers (a signed int32, as the device takes it)."""
    (state,) = np.random.SeedSequence(list(parts)).generate_state(1)
    return int(np.array(state, np.uint32).view(np.int32))


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 bit patterns."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _hash(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (Wellons's lowbias32) on int32 bit patterns; the
    multiplications wrap around the same way on every backend."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, "int32"))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B - (1 << 32), "int32"))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def _random_bits(key: Tensor, count: int, stream: int) -> Tensor:
    """`count` pseudo-random non-negative int32 (31 bits) of `key`'s stream `stream`."""
    counters = ops.arange(count, dtype="int32") * 4 + stream
    return _shift_right(_hash(ops.bitwise_xor(_hash(counters), key)), 1)


def _permutation(key: Tensor, count: int) -> Tensor:
    return ops.cast(ops.argsort(_random_bits(key, count, 0)), "int32")


def _inception_indices(key: Tensor, size: int, image_hw: tuple[int, int], crop: Crop) -> tuple[Tensor, Tensor]:
    """Each image's source rows `[n, H]` and columns `[n, W]` of a random-resized crop
    (`data.crops`), from the streams of `key` that the translation would use, and 0,
    none of them the flip's."""

    def uniform(count: int, stream: int) -> Tensor:
        # 24 of the 31 bits, so that float32 holds each exactly and 1.0 is never drawn.
        return ops.cast(_shift_right(_random_bits(key, count, stream), 7), "float32") / float(2**24)

    draws = (
        ops.reshape(uniform(size * crops.TRIES, 1), (size, crops.TRIES)),
        ops.reshape(uniform(size * crops.TRIES, 2), (size, crops.TRIES)),
        ops.reshape(uniform(size * 2, 0), (size, 2)),
    )
    top, left, crop_h, crop_w = crops.boxes(ops, *draws, image_hw, crop.area, crop.ratio)
    rows = crops.sample_at(ops, top, crop_h, image_hw[0])
    columns = crops.sample_at(ops, left, crop_w, image_hw[1])
    return ops.cast(rows, "int32"), ops.cast(columns, "int32")


def _pad(image_shape: tuple[int, int, int]) -> int:
    """Translations of up to 1/8 of the side, as `pipeline.make_augment`."""
    return max(1, round(min(image_shape[:2]) / 8))


def _make_batch(
    images: Tensor,
    labels: Tensor,
    example_ids: Tensor,
    table: Tensor,
    order: Tensor,
    start: Tensor,
    key: Tensor,
    *,
    size: int,
    augment: bool,
    pad: int,
    flip: bool,
    crop: Crop = Crop(),
) -> dict[str, Tensor]:
    """One training batch: the examples at positions `order[start:start + size]`, their
    ids, images (randomly translated by up to `pad` pixels, zero-filled, or with
    `crop.kind == "inception"` a random-resized crop, and mirrored if `flip`), labels,
    and targets read from the table by id. The crop is one gather of each output pixel
    from the (padded) images."""
    positions = ops.slice(order, [start], [size])
    ids = ops.take(example_ids, positions, axis=0)
    batch = ops.take(images, positions, axis=0)
    if augment:
        _, height, width, channels = batch.shape
        if crop.kind == "inception":
            pad = 0
            padded = batch
            rows, columns = _inception_indices(key, size, (height, width), crop)
        else:
            padded = ops.pad(batch, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            span = 2 * pad + 1
            rows = ops.arange(height, dtype="int32")[None, :] + _random_bits(key, size, 1)[:, None] % span
            columns = ops.arange(width, dtype="int32")[None, :] + _random_bits(key, size, 2)[:, None] % span
        if flip:
            mirrored = (_random_bits(key, size, 3) % 2 == 1)[:, None]
            columns = ops.where(mirrored, ops.flip(columns, axis=1), columns)
        pixels = rows[:, :, None] * (width + 2 * pad) + columns[:, None, :]
        flat = ops.reshape(padded, (size, -1, channels))
        picked = ops.take_along_axis(flat, ops.reshape(pixels, (size, -1, 1)), axis=1)
        batch = ops.reshape(picked, (size, height, width, channels))
    return {
        "id": ids,
        "image": batch,
        "label": ops.take(labels, positions, axis=0),
        "target": ops.take(table, ids, axis=0),
    }
