"""Label Refinery on data held in memory as arrays: no TensorFlow, batches made on the device.

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

    data = InMemoryData(images, labels)            # uint8 [n, H, W, C], int [n]
    trainer, history = train_chain(data, Config(generations=3, epochs=30, depth=20))

The durable chain (work directory, resume, stores, export) stays the tf.data path
(`run.py`); this one trains in one process and returns the trainer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops

from krefinery.config import Config
from krefinery.core.label_refinery import LabelRefinery
from krefinery.core.relabel import INFERENCE_BATCH_SIZE, RefinedLabels
from krefinery.core.resnet import seeded_resnet
from krefinery.core.trainer import Trainer, make_optimizer
from krefinery.errors import UserError

Tensor = Any  # A backend tensor.


class DeviceLabelTable:
    """The `[n, classes]` label table as a Keras variable beside in-memory images.

    `LabelRefinery`'s table for `InMemoryData`; every example is a training example, and
    its id is its row in the arrays. Relabelling runs the labeller over chunks sliced
    from the device images, and assigns the result to the variable.
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int):
        self._images, self._labels, self._classes = images, labels, num_classes
        self.variable = keras.Variable(
            self._truth(), trainable=False, dtype="float32", name="training_labels"
        )

    def _truth(self) -> Tensor:
        return ops.one_hot(self._labels, self._classes, dtype="float32")

    def refine(self, labeller: RefinedLabels) -> None:
        self.variable.assign(labeller.of_arrays(self._images, self._labels))

    def values(self) -> np.ndarray:
        return np.array(ops.convert_to_numpy(self.variable.value))

    def labelled(self, labeller: RefinedLabels) -> np.ndarray:
        return labeller.of_arrays(self._images, self._labels)

    def reset(self) -> None:
        self.variable.assign(self._truth())


class InMemoryData:
    """Training images (`uint8 [n, H, W, C]`) and labels (`int [0, classes)`), on the device.

    `flip`: whether a horizontal mirror is a valid augmentation (photos yes, digits no).
    `batches(...)` makes a generation's training batches for `fit`; `labels` is the table
    `LabelRefinery` refines.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int | None = None,
        flip: bool = False,
    ):
        images, labels, classes = _checked(images, labels, num_classes)
        self.num_examples = len(images)
        self.num_classes = classes
        self.image_shape: tuple[int, int, int] = tuple(int(d) for d in images.shape[1:])
        self.flip = flip
        self.images = ops.convert_to_tensor(images)
        self.ground_truth = ops.convert_to_tensor(labels)
        self.labels = DeviceLabelTable(self.images, self.ground_truth, classes)
        self._order = _compiled(_permutation, static=("count",))
        self._batch = _compiled(
            functools.partial(_make_batch, pad=_pad(self.image_shape), flip=flip),
            static=("size", "augment"),
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.num_examples // batch_size)

    def batches(
        self,
        batch_size: int,
        seed: int,
        generation: int = 1,
        augment: bool = True,
        initial_epoch: int = 0,
    ) -> keras.utils.PyDataset:
        """Generation `generation`'s batches from epoch `initial_epoch` on, one endless
        stream: pass `steps_per_epoch` and `shuffle=False` to `fit`. Epoch e is the same
        batches whenever it is made (see `Batches`)."""
        return Batches(self, batch_size, seed, generation, augment, initial_epoch)

    def order(self, seed: int, generation: int, epoch: int) -> Tensor:
        """The ids of an epoch, in the order it visits them."""
        key = ops.convert_to_tensor(np.int32(_key(seed, generation, epoch, 0)))
        return self._order(key, count=self.num_examples)

    def batch(
        self, order: Tensor, start: int, size: int, key: int, augment: bool
    ) -> dict[str, Tensor]:
        """`{"id", "image", "label", "target"}` of `order[start:start + size]`."""
        return self._batch(
            self.images,
            self.ground_truth,
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
    ):
        super().__init__()  # One worker: items are dispatched to the device, not computed here.
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.generation, self.augment, self.initial_epoch = generation, augment, initial_epoch
        self.steps = data.steps_per_epoch(batch_size)
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
        key = _key(self.seed, self.generation, epoch, 1 + step)
        return self.data.batch(self._epoch_order[1], start, size, key, self.augment)


class EvaluationBatches(keras.utils.PyDataset):
    """Un-augmented `{"image", "label"}` batches of arrays, in order, for `evaluate` and
    `fit`'s `validation_data`; the arrays are put on the device once."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = INFERENCE_BATCH_SIZE):
        super().__init__()
        images, labels, _ = _checked(images, labels, None)
        self.images, self.labels = ops.convert_to_tensor(images), ops.convert_to_tensor(labels)
        self.batch_size = batch_size

    @property
    def num_batches(self) -> int:
        return -(-int(self.images.shape[0]) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {"image": self.images[rows], "label": self.labels[rows]}


def build_chain(
    data: InMemoryData,
    config: Config,
    on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[Trainer, LabelRefinery]:
    """The compiled `Trainer` (with a teacher slot if `config.relabel` is online) and the
    `LabelRefinery` of a chain on `data`, its table back at ground truth; nothing trained.

    Reads the model, optimisation and refinery fields of `config`; `precision="auto"`
    means float32 here (`run.py`'s choice per device needs TensorFlow).
    """
    precision = "float32" if config.precision == "auto" else config.precision
    config.check_batch_size(data.num_examples)
    if config.architecture(1) != config.architecture(2):
        raise UserError(
            "the in-memory chain trains one architecture (one trainer); leave the "
            "--refinery_* settings unset, or use run.py for a refinery of its own shape."
        )

    def build(generation: int, seed: int) -> keras.Model:
        return seeded_resnet(
            config.architecture(generation),
            seed,
            data.image_shape,
            data.num_classes,
            weight_decay=config.weight_decay,
            precision=precision,
        )

    online = config.relabel == "online"
    trainer = Trainer(build(1, config.seed), teacher=build(1, config.seed) if online else None)
    steps = data.steps_per_epoch(config.batch_size)
    jit_compile = "auto" if config.jit_compile is None else config.jit_compile
    trainer.compile(make_optimizer(config, steps, precision), jit_compile=jit_compile)
    data.labels.reset()
    refinery = LabelRefinery(
        data.labels,
        build,
        config.refinement,
        seed=config.seed,
        jit_compile=bool(trainer.jit_compile),
        on_relabel=on_relabel,
    )
    return trainer, refinery


def train_chain(
    data: InMemoryData,
    config: Config,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    on_relabel: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[Trainer, list[dict[str, list[float]]]]:
    """`config.generations` generations of `config.epochs` each on `data`, offline or
    online: `build_chain`'s trainer and refinery, fed by `InMemoryData.batches`, and
    validated on `validation` (images, labels) after each epoch if given. Returns the
    trainer (its classifier is the last generation) and each generation's `fit` history.
    """
    trainer, refinery = build_chain(data, config, on_relabel)
    val = None if validation is None else EvaluationBatches(*validation)
    histories = []
    for generation in range(1, config.generations + 1):
        history = trainer.fit(
            data.batches(config.batch_size, config.seed, generation, config.augment),
            epochs=config.epochs,
            steps_per_epoch=data.steps_per_epoch(config.batch_size),
            validation_data=val,
            callbacks=[refinery, *callbacks],
            shuffle=False,
            verbose=config.verbose,
        )
        histories.append(history.history)
    return trainer, histories


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


def _pad(image_shape: tuple[int, int, int]) -> int:
    """Translations of up to 1/8 of the side, as `pipeline.make_augment`."""
    return max(1, round(min(image_shape[:2]) / 8))


def _make_batch(
    images: Tensor,
    labels: Tensor,
    table: Tensor,
    order: Tensor,
    start: Tensor,
    key: Tensor,
    *,
    size: int,
    augment: bool,
    pad: int,
    flip: bool,
) -> dict[str, Tensor]:
    """One training batch: ids `order[start:start + size]`, their images (randomly
    translated by up to `pad` pixels, zero-filled, and mirrored if `flip`), labels and
    targets. The crop is one gather of each output pixel from the padded images."""
    ids = ops.slice(order, [start], [size])
    batch = ops.take(images, ids, axis=0)
    if augment:
        _, height, width, channels = batch.shape
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
        "label": ops.take(labels, ids, axis=0),
        "target": ops.take(table, ids, axis=0),
    }
