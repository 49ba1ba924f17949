"""tf.data pipelines whose every example carries an id, so labels can be joined by id.

Each training example's position in its source is its id. The refined labels live in a
`[num_ids, num_classes]` table; the training pipeline gathers each batch's targets from
the table by id *after* shuffling and augmenting, so no reordering can misalign an
image and its label, and relabelling is a write to the table, not a new pipeline.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from krefinery.config import Crop
from krefinery.core.relabel import INFERENCE_BATCH_SIZE
from krefinery.data import crops, images
from krefinery.data.feed import DataInfo
from krefinery.data.sources import Arrays, Files, Source
from krefinery.data.splits import TEST, TRAIN, VAL, source_roles, steps_per_epoch
from krefinery.progress import Progress

if TYPE_CHECKING:
    from krefinery.core.relabel import RefinedLabels

MAX_SHUFFLE_BUFFER = 50_000
# Arrays reach tf.data in chunks of this many.
IN_MEMORY_CHUNK = 512
# The cache holds chunks of examples rather than single ones: per-element bookkeeping
# otherwise costs about as much memory as the images themselves (bench/memory.py).
CACHE_CHUNK = 512
# tf.data's autotuner stays off in the batches Keras consumes (see `_prefetched`).
PIPELINE_OPTIONS = tf.data.Options()
PIPELINE_OPTIONS.autotune.enabled = False

Example = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Splits(DataInfo):
    """Train, validation and test examples `{"id", "image", "label"}`, each cached (or,
    streamed, decoded as read), and what a run records of them (`DataInfo`).

    `train` and `val` (and `test`, when carved) share the id space `0..num_ids-1` of the
    source's training split, so a label table indexed by id covers every train example.
    `train_records` is `train` before `decode`: the same examples, streamed ones as
    `{"id", "file", "label"}`, cheap to shuffle and to read labels from.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    train_records: tf.data.Dataset
    decode: Callable[[Example], Example] | None = None
    # Streamed from TFDS: the training records at train positions [first, first + count),
    # read without those before them (see `_shuffled`); None where `skip` is cheap.
    train_block: Callable[[int, int], tf.data.Dataset] | None = None


def make_splits(source: Source, val_fraction: float, seed: int) -> Splits:
    """Carves validation (and test, if the source has none) out of train, fixed by `seed`.
    A streamed source (`Files`, or TFDS records with `Source.stream`) is split as records
    and decoded as it is read; any other is cached in memory after its first pass."""
    train = as_dataset(source.train)
    num_ids = count(train)
    roles = source_roles(source, num_ids, val_fraction, seed)
    examples = with_ids(train)
    role_of = tf.constant(roles)
    decode = decoder(source.train) if isinstance(source.train, Files) else None
    train_block = None
    if source.stream is not None:
        decode = source.stream.decode
        train_block = _train_blocks(source.stream.train_range, roles)

    def kept(records: tf.data.Dataset, size: int) -> tf.data.Dataset:
        # A known size lets Keras show progress from the first epoch.
        if decode is None:
            return cached(records, size)
        return records.apply(tf.data.experimental.assert_cardinality(size))

    def decoded(records: tf.data.Dataset) -> tf.data.Dataset:
        if decode is None:
            return records
        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def subset(role: int) -> tf.data.Dataset:
        chosen = examples.filter(lambda ex: tf.gather(role_of, ex["id"]) == role)
        return kept(chosen, int(np.sum(roles == role)))

    if source.test is None:
        test, num_test = subset(TEST), int(np.sum(roles == TEST))
    else:
        num_test = count(as_dataset(source.test))
        test = kept(with_ids(as_dataset(source.test)), num_test)
    train_records = subset(TRAIN)
    return Splits(
        train=decoded(train_records),
        train_records=train_records,
        decode=decode,
        train_block=train_block,
        val=decoded(subset(VAL)),
        test=decoded(test),
        num_ids=num_ids,
        num_train=int(np.sum(roles == TRAIN)),
        num_val=int(np.sum(roles == VAL)),
        num_test=num_test,
        class_names=source.class_names,
        image_shape=source.image_shape,
        flip_safe=source.flip_safe,
        notes=source.notes,
    )


def _train_blocks(train_range: Callable[[int, int], tf.data.Dataset], roles: np.ndarray) -> Callable:
    """`block(first, count)`: the training records at train positions first..first+count-1,
    as `subset(TRAIN)` has them, from the one range of the source that holds them."""
    train_ids = np.flatnonzero(roles == TRAIN)
    role_of = tf.constant(roles)

    def block(first: int, count: int) -> tf.data.Dataset:
        chosen = train_ids[first : first + count]
        start, stop = int(chosen[0]), int(chosen[-1]) + 1
        numbered = train_range(start, stop).enumerate(start)
        records = numbered.map(lambda i, ex: {**ex, "id": i, "label": tf.cast(ex["label"], tf.int32)})
        return records.filter(lambda ex: tf.gather(role_of, ex["id"]) == TRAIN)

    return block


def cached(examples: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """`examples`, kept in memory after the first pass, in order, with a known size."""
    chunks = examples.batch(CACHE_CHUNK).cache()
    return chunks.unbatch().apply(tf.data.experimental.assert_cardinality(size))


def as_dataset(examples: Arrays | Files | tf.data.Dataset) -> tf.data.Dataset:
    """A source's split as tf.data: arrays are streamed in chunks, so the graph holds no
    copy of them; files are `{"file", "label"}` records (see `decoder`)."""
    if isinstance(examples, tf.data.Dataset):
        return examples
    if isinstance(examples, Files):
        return tf.data.Dataset.from_tensor_slices({"file": list(examples.files), "label": examples.labels})
    images, labels = examples.images, examples.labels

    def chunks():
        for start in range(0, len(labels), IN_MEMORY_CHUNK):
            stop = start + IN_MEMORY_CHUNK
            yield {"image": images[start:stop], "label": labels[start:stop]}

    spec = {
        "image": tf.TensorSpec((None, *images.shape[1:]), tf.uint8),
        "label": tf.TensorSpec((None,), tf.as_dtype(labels.dtype)),
    }
    dataset = tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()
    return dataset.apply(tf.data.experimental.assert_cardinality(len(labels)))


def to_arrays(examples: tf.data.Dataset) -> Arrays:
    """A tf.data split read once into arrays (a TFDS split, for the in-memory path)."""
    images, labels = [], []
    for batch in examples.batch(CACHE_CHUNK).as_numpy_iterator():
        images.append(batch["image"])
        labels.append(batch["label"])
    return Arrays(np.concatenate(images), np.concatenate(labels))


def with_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Numbers examples by position: `{"id": int64, "image": uint8, "label": int32}` (or
    `"file"` in place of `"image"`, for records of files)."""
    return dataset.enumerate().map(lambda i, ex: {**ex, "id": i, "label": tf.cast(ex["label"], tf.int32)})


def decoder(files: Files) -> Callable[[Example], Example]:
    """Record `{"id", "file", "label"}` -> example `{"id", "image", "label"}`: the file
    decoded by the folders' rules (`images.read_pixels`, Pillow), as when it was held in
    memory, so a streamed run sees the pixels of one that is not."""
    root, shape = files.root, files.shape

    def read(name: bytes) -> np.ndarray:
        path = os.path.join(root, name.decode())
        try:
            return images.read_pixels(path, shape)
        except images.BadImage as error:  # It read at the start: changed since.
            raise images.BadImage(f"{path}: {error}, though it read when the run started") from None

    def decode(record: Example) -> Example:
        image = tf.numpy_function(read, [record["file"]], tf.uint8, stateful=False)
        image.set_shape(shape)
        return {"id": record["id"], "image": image, "label": record["label"]}

    return decode


class TFLabelTable:
    """The `[num_ids, classes]` label table as a `tf.Variable`, read by `training_dataset`;
    a relabel labels each training image as evaluation sees it (`view`, `data.crops`).

    The TensorFlow implementation of the table `LabelRefinery` refines (the in-memory one
    is `memory.DeviceLabelTable`): `training_dataset` gathers each batch's targets from it
    by id, so a relabel is a write here, not a new pipeline. Rows of ids outside `train`
    (validation and test images) stay 0.
    """

    def __init__(
        self,
        train: tf.data.Dataset,
        num_ids: int,
        num_classes: int,
        batch_size: int = INFERENCE_BATCH_SIZE,
        view: crops.View = None,
        records: tf.data.Dataset | None = None,
    ):
        self.examples = eval_dataset(train, batch_size, view)
        self._truth = onehot_values(train if records is None else records, num_ids, num_classes)
        self.variable = tf.Variable(self._truth, trainable=False, name="training_labels")

    def gather(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.variable, ids)

    @property
    def size(self) -> int:
        return int(self._truth.sum())  # One 1 in each training example's row.

    def refine(self, labeller: RefinedLabels, progress: Progress | None = None) -> None:
        """Writes `labeller`'s refined labels of every training example, by id."""
        for batch in self.examples.as_numpy_iterator():
            targets = labeller.of_batch(batch["image"], batch["label"])
            self.variable.scatter_nd_update(batch["id"][:, None], targets)
            if progress is not None:
                progress.add(len(targets))

    def values(self) -> np.ndarray:
        return self.variable.numpy()

    def labelled(self, labeller: RefinedLabels, progress: Progress | None = None) -> np.ndarray:
        """`values()` with the training rows replaced by `labeller`'s labels."""
        table = self.values()
        for batch in self.examples.as_numpy_iterator():
            table[batch["id"]] = labeller.of_batch(batch["image"], batch["label"])
            if progress is not None:
                progress.add(len(batch["id"]))
        return table

    def reset(self) -> None:
        """Ground truth back in, for a chain's generation 1."""
        self.variable.assign(self._truth)


def onehot_table(
    train: tf.data.Dataset,
    num_ids: int,
    num_classes: int,
    batch_size: int = INFERENCE_BATCH_SIZE,
    view: crops.View = None,
    records: tf.data.Dataset | None = None,
) -> TFLabelTable:
    """The ground-truth label table that generation 1 trains on; it relabels `train`,
    seen through `view`, in batches of `batch_size`. Its labels are read from `records`
    where given (`Splits.train_records`: no image is decoded for them).

    Reading `train` once here also fills its cache before the first epoch.
    """
    return TFLabelTable(train, num_ids, num_classes, batch_size, view, records)


def onehot_values(train: tf.data.Dataset, num_ids: int, num_classes: int) -> np.ndarray:
    """Ground truth as a `[num_ids, num_classes]` array (rows of non-train ids stay 0)."""
    table = np.zeros((num_ids, num_classes), np.float32)
    for batch in train.batch(INFERENCE_BATCH_SIZE).as_numpy_iterator():
        table[batch["id"], batch["label"]] = 1.0
    return table


def make_augment(image_shape: tuple[int, int, int], flip: bool, crop: Crop = Crop()) -> Callable:
    """Random translation by up to 1/8 of the size (pad-4 crop at 32x32), or with
    `crop.kind == "inception"` a random-resized crop (`data.crops`), plus optional flip.

    Works on whole batches `[n, H, W, C]`: the (zero-padded) batch is cut by two gathers
    whose per-example row and column indices carry each image's random crop (and, for
    a flip, run backwards), so the cost is one copy of the batch, not n small ops.
    Stateless: `augment(batch, seed)` with a `[2]` seed always gives the same images.
    """
    height, width, _ = image_shape
    pad = 0 if crop.kind == "inception" else max(1, round(min(height, width) / 8))

    def indices(count: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Each image's source rows `[n, H]` and columns `[n, W]` in the padded batch."""
        if crop.kind != "inception":
            offsets = tf.random.stateless_uniform([count, 2], seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
            return offsets[:, :1] + tf.range(height)[None, :], offsets[:, 1:] + tf.range(width)[None, :]
        area_seed, ratio_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        draws = [tf.random.stateless_uniform(shape, s, dtype=tf.float64) for shape, s in (
            ([count, crops.TRIES], area_seed), ([count, crops.TRIES], ratio_seed), ([count, 2], place_seed)
        )]
        top, left, crop_h, crop_w = crops.boxes(tnp, *draws, (height, width), crop.area, crop.ratio)
        rows = crops.sample_at(tnp, top, crop_h, height)
        columns = crops.sample_at(tnp, left, crop_w, width)
        return tf.cast(rows, tf.int32), tf.cast(columns, tf.int32)

    def augment(batch: Example, seed: tf.Tensor) -> Example:
        images = batch["image"]
        count = tf.shape(images)[0]
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        rows, columns = indices(count, crop_seed)
        if flip:
            mirrored = tf.random.stateless_uniform([count, 1], flip_seed) < 0.5
            columns = tf.where(mirrored, tf.reverse(columns, [1]), columns)
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, columns, axis=2, batch_dims=1)
        return {**batch, "image": images}

    return augment


def training_dataset(
    train: tf.data.Dataset,
    labels: TFLabelTable,
    batch_size: int,
    seed: int,
    augment: Callable | None = None,
    shuffle_buffer: int = MAX_SHUFFLE_BUFFER,
    generation: int = 1,
    epochs: int = 1,
    initial_epoch: int = 0,
    multiple_of: int = 1,
    decode: Callable[[Example], Example] | None = None,
    train_block: Callable[[int, int], tf.data.Dataset] | None = None,
) -> tf.data.Dataset:
    """Epochs `initial_epoch..epochs-1` of a generation, as one stream of shuffled,
    augmented batches `{"id", "image", "label", "target"}`; pass `steps_per_epoch` to `fit`.
    With `decode`, `train` holds records (`Splits.train_records`) that are shuffled
    first and decoded after, in the order the examples would have come; `train_block`
    reads a block of them where skipping to it would read all those before.

    Each epoch's order and augmentation come from stateless ops seeded by (seed,
    generation, epoch) alone, so epoch e is the same stream whenever and wherever it
    is made: a run resumed at epoch e, or a generation trained on a stored parent,
    sees exactly the batches of a run trained in one go. `target` is read from
    `labels` by id as each batch is made, so writing new labels into the table
    relabels every later batch. Up to `shuffle_buffer` (50k) examples are shuffled
    fully; larger sets are cut into blocks of that size, shuffled within each block,
    and the blocks come in a random order. With `multiple_of` (the replica count, when
    several devices share each batch evenly), each epoch's last batch is cut to a
    multiple of it: up to `multiple_of - 1` images, a different few each epoch,
    sit that epoch out.
    """
    num_examples = int(train.cardinality())
    if num_examples < 0:
        raise ValueError("training_dataset needs a dataset of known size (see `cached`).")
    block = max(1, min(shuffle_buffer, MAX_SHUFFLE_BUFFER, num_examples))
    steps = steps_per_epoch(num_examples, batch_size, multiple_of)
    base = tf.constant([seed, generation], tf.int64)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.random.experimental.stateless_fold_in(base, epoch)
        shuffle_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(epoch_seed, 2)
        )
        examples = _shuffled(train, num_examples, block, shuffle_seed, train_block)
        if decode is not None:
            examples = examples.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = examples.batch(batch_size)
        if augment is not None:
            batches = batches.enumerate().map(
                lambda step, batch: augment(
                    batch, tf.random.experimental.stateless_fold_in(augment_seed, step)
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        if multiple_of > 1:
            batches = batches.map(lambda batch: _cut(batch, multiple_of))
            batches = batches.filter(lambda batch: tf.shape(batch["id"])[0] > 0)
        return batches

    dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch_batches)
    dataset = dataset.map(lambda batch: {**batch, "target": labels.gather(batch["id"])})
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(max(0, epochs - initial_epoch) * steps)
    )
    return _prefetched(dataset)


def _prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` prefetched, with tf.data's autotuner off.

    With the autotuner on, freeing an iterator that Keras's `fit`, `evaluate` or `predict`
    drove waits for the autotuner's next wake-up, and those come 10 ms, 30, 70, ... 2.55 s,
    5.11 s ... after the iterator began: a `fit` whose batches took 2.7 to 3.3 s returned
    after 5.1 s in 4 of 5 tries (TF 2.21). Off, the pipelines drained as fast as with it
    on (bench/RESULTS.md, section 16).
    """
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(PIPELINE_OPTIONS)


def _cut(batch: Example, multiple_of: int) -> Example:
    """The batch's first examples, as many as the largest multiple of `multiple_of`."""
    count = tf.shape(batch["id"])[0]
    keep = count - count % multiple_of
    return {name: value[:keep] for name, value in batch.items()}


def _shuffled(
    examples: tf.data.Dataset,
    num_examples: int,
    block: int,
    seed: tf.Tensor,
    train_block: Callable[[int, int], tf.data.Dataset] | None = None,
) -> tf.data.Dataset:
    """`examples` in a random order drawn by stateless ops from `seed` (see training_dataset):
    blocks of `block` examples in a random order, each permuted. `train_block(first, count)`
    reads a block of `examples` directly (a TFDS stream); else a block is skipped to."""
    num_blocks = -(-num_examples // block)

    def permute(index: tf.Tensor, chunk: Example) -> Example:
        count = tf.shape(chunk["id"])[0]
        keys = tf.random.stateless_uniform(
            [count], tf.random.experimental.stateless_fold_in(seed, index)
        )
        order = tf.argsort(keys, stable=True)
        return {name: tf.gather(value, order) for name, value in chunk.items()}

    if num_blocks == 1:
        return examples.batch(block).enumerate().map(permute).unbatch()
    block_order = tf.argsort(tf.random.stateless_uniform([num_blocks], seed), stable=True)
    if train_block is not None:
        # TFDS reads a range by Python numbers, so each block is its own dataset, and the
        # block order picks among them, a block's size of examples at a time.
        blocks = [
            train_block(index * block, block).batch(block).map(lambda c, i=index: permute(tf.constant(i, tf.int64), c)).unbatch()
            for index in range(num_blocks)
        ]
        sizes = tf.constant([min(block, num_examples - index * block) for index in range(num_blocks)], tf.int64)
        choices = tf.data.Dataset.from_tensor_slices(tf.cast(block_order, tf.int64)).flat_map(
            lambda index: tf.data.Dataset.from_tensors(index).repeat(sizes[index])
        )
        return tf.data.Dataset.choose_from_datasets(blocks, choices)

    def one_block(index: tf.Tensor) -> tf.data.Dataset:
        index = tf.cast(index, tf.int64)
        chunk = examples.skip(index * block).take(block).batch(block)
        return chunk.map(lambda c: permute(index, c))

    return (
        tf.data.Dataset.from_tensor_slices(block_order).flat_map(one_block).unbatch()
    )


class TFDataFeed:
    """A chain's data through tf.data (`feed.Feed`): the splits cached in memory (or
    streamed from files), training
    batches shuffled and augmented by stateless ops, targets gathered by id.

    `multiple_of`: what every training batch must be a multiple of (the replicas that
    share it); `evaluation_batch(count)`: the batch in which a set of `count` examples
    is evaluated (see `runtime.distribute.Replication`).
    """

    def __init__(
        self,
        splits: Splits,
        batch_size: int,
        seed: int,
        epochs: int,
        augment: bool = True,
        multiple_of: int = 1,
        evaluation_batch: Callable[[int], int] = lambda count: INFERENCE_BATCH_SIZE,
        crop: Crop = Crop(),
    ):
        self.splits = splits
        self.info = splits
        self.view = crops.centre_indices(splits.image_shape[:2], crop.center)
        self.labels = onehot_table(
            splits.train, splits.num_ids, splits.num_classes, evaluation_batch(splits.num_train), self.view,
            splits.train_records,
        )
        self.batch_size, self.seed, self.epochs, self.multiple_of = batch_size, seed, epochs, multiple_of
        self.augment = make_augment(splits.image_shape, splits.flip_safe, crop) if augment else None
        self.steps_per_epoch = steps_per_epoch(splits.num_train, batch_size, multiple_of)
        self._evaluation_batch = evaluation_batch
        self.validation = eval_dataset(splits.val, evaluation_batch(splits.num_val), self.view)
        self.test = eval_dataset(splits.test, evaluation_batch(splits.num_test), self.view)
        self._truth: tuple[np.ndarray, np.ndarray] | None = None

    def training(self, generation: int, initial_epoch: int = 0) -> tf.data.Dataset:
        splits = self.splits
        return training_dataset(
            splits.train_records,
            self.labels,
            self.batch_size,
            self.seed,
            self.augment,
            splits.num_train,
            generation=generation,
            epochs=self.epochs,
            initial_epoch=initial_epoch,
            multiple_of=self.multiple_of,
            decode=splits.decode,
            train_block=splits.train_block,
        )

    def train_unaugmented(self) -> tf.data.Dataset:
        return eval_dataset(self.splits.train, self._evaluation_batch(self.splits.num_train), self.view)

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        if self._truth is None:
            pairs = self.splits.train_records.map(lambda e: (e["id"], e["label"]))
            ids, labels = zip(*eval_dataset(pairs).as_numpy_iterator())
            self._truth = (np.concatenate(ids), np.concatenate(labels))
        return self._truth

    def images(self, ids: np.ndarray) -> np.ndarray:
        """One pass over the training examples, stopping once every id is found."""
        wanted = {int(i): n for n, i in enumerate(ids)}
        found: dict[int, np.ndarray] = {}
        for batch in eval_dataset(self.splits.train).as_numpy_iterator():
            for i, image in zip(batch["id"], batch["image"]):
                if int(i) in wanted:
                    found[wanted[int(i)]] = image
            if len(found) == len(wanted):
                break
        return np.stack([found[n] for n in range(len(ids))])


def eval_dataset(
    examples: tf.data.Dataset, batch_size: int = INFERENCE_BATCH_SIZE, view: crops.View = None
) -> tf.data.Dataset:
    """Un-augmented batches in a fixed order, for evaluation and relabelling; each image
    as `view` shows it (`crops.centre_indices`; None: whole)."""
    batches = examples.batch(batch_size)
    if view is not None:
        batches = batches.map(lambda batch: {**batch, "image": crops.view(tnp, batch["image"], view)})
    return _prefetched(batches)


def count(dataset: tf.data.Dataset) -> int:
    """Examples in `dataset`: its cardinality, or one pass where that is unknown."""
    count = int(dataset.cardinality())
    if count < 0:  # Unknown or infinite: count by reading once.
        count = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
    return count
