import numpy as np
import pytest
import tensorflow as tf
from helpers import KnownFunction, constant_images

from krefinery.config import Refinement
from krefinery.core.losses import refined_labels
from krefinery.core.refinement import Relabeller
from krefinery.core.trainer import Trainer
from krefinery.data.pipeline import (
    eval_dataset,
    make_augment,
    make_splits,
    onehot_table,
    training_dataset,
)
from krefinery.data.splits import TEST, TRAIN, VAL, assign_roles
from krefinery.errors import UserError


def test_roles_have_exact_sizes_fixed_by_the_seed():
    roles = assign_roles(1000, 0.1, 0.2, seed=3)
    assert [int(np.sum(roles == r)) for r in (TRAIN, VAL, TEST)] == [700, 100, 200]
    np.testing.assert_array_equal(roles, assign_roles(1000, 0.1, 0.2, seed=3))
    assert np.any(roles != assign_roles(1000, 0.1, 0.2, seed=4))


def test_too_few_examples_to_carve_is_a_clear_error():
    with pytest.raises(UserError, match="too few"):
        assign_roles(2, 0.5, 0.5, seed=0)


def test_splits_partition_the_examples_by_id():
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    ids = {name: [int(i) for i in getattr(splits, name).map(lambda e: e["id"])] for name in ("train", "val", "test")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (48, 6, 6)
    assert (splits.num_train, splits.num_val, splits.num_test, splits.num_ids) == (48, 6, 6, 60)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(60))
    for example in splits.val:  # Each id still carries its own image and label.
        i = int(example["id"])
        assert int(example["image"][0, 0, 0]) == 4 * i + 3 and int(example["label"]) == i % 4


def test_onehot_table_holds_ground_truth_by_id():
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    table = onehot_table(splits.train, splits.num_ids, splits.num_classes).values()
    train_ids = [int(e["id"]) for e in splits.train]
    np.testing.assert_array_equal(table[train_ids].argmax(-1), np.array(train_ids) % 4)
    assert table.sum() == len(train_ids)


def test_a_relabel_pass_shows_its_count_and_time_left_in_a_log(monkeypatch, capsys):
    """--verbose=2 (a log file): a line per PROGRESS_INTERVAL seconds (here 0, so per
    batch of 7) with the count so far and the time left, and one at the end, whether the
    pass reads tf.data or slices images held on the device; the default, 0, prints nothing."""
    from krefinery import progress
    from krefinery.core.relabel import RefinedLabels
    from krefinery.data.memory import InMemoryData

    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes, batch_size=7)
    known = KnownFunction()
    Relabeller(labels).hand_on(known, Trainer(known), Refinement(2, temperature=2.0))
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.0)
    Relabeller(labels, verbose=2).hand_on(known, Trainer(known), Refinement(2, temperature=2.0))
    tfdata = capsys.readouterr().out.splitlines()
    images = np.stack([e["image"] for e in splits.train.as_numpy_iterator()])
    with progress.Progress("relabelling the training images", 48, verbose=2) as shown:
        RefinedLabels(known, 2.0, 0.0).of_arrays(images, np.arange(48) % 4, batch_size=7, progress=shown)
    memory = capsys.readouterr().out.splitlines()
    # The device-held table hands its progress on to that pass: every example counted once.
    table = InMemoryData(images, np.arange(48) % 4, 4).labels
    with progress.Progress("relabelling the training images", table.size, verbose=0) as counted:
        table.refine(RefinedLabels(known, 2.0, 0.0), counted)
    assert counted.done == table.size == 48
    for lines in (tfdata, memory):
        assert all(line.startswith("relabelling the training images: ") for line in lines), lines
        assert [int(line.split(": ")[1].split("/")[0]) for line in lines] == [*range(7, 48, 7), 48]
        assert all(line.endswith(" s left") for line in lines[:-1])
        assert lines[-1].startswith("relabelling the training images: 48/48 images in ")


def test_refined_labels_stay_aligned_under_shuffling_and_augmentation():
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes, batch_size=7)
    known = KnownFunction()
    Relabeller(labels).hand_on(known, Trainer(known), Refinement(2, temperature=2.0))

    augment = make_augment(splits.image_shape, flip=True)
    pipeline = training_dataset(splits.train, labels, 8, seed=1, augment=augment, shuffle_buffer=48, epochs=2)
    steps = 6  # 48 examples in batches of 8.
    batches = list(pipeline)
    assert len(batches) == 2 * steps
    orders = []
    for epoch in range(2):  # One stream of two epochs, as fit reads it with steps_per_epoch.
        order, translated = [], 0
        for batch in batches[epoch * steps : (epoch + 1) * steps]:
            ids = batch["id"].numpy()
            images = tf.cast(batch["image"], tf.float32)
            # The brightest pixel of each (augmented) image tells which example it is...
            np.testing.assert_array_equal(tf.reduce_max(images, [1, 2, 3]), ids * 4 + 3)
            np.testing.assert_array_equal(batch["label"], ids % 4)
            # ...and its target is the known function's refined label of that very image.
            expected = refined_labels(known(batch["image"]), batch["label"], 2.0, 0.0)
            np.testing.assert_allclose(batch["target"], expected, atol=1e-6)
            translated += int(tf.reduce_sum(tf.cast(tf.reduce_min(images, [1, 2, 3]) == 0, tf.int32)))
            order += ids.tolist()
        assert sorted(order) == sorted(int(e["id"]) for e in splits.train)
        assert translated > 0, "augmentation should move some images"
        orders.append(order)
    assert orders[0] != orders[1], "each epoch should be shuffled anew"


def test_pipeline_is_fixed_by_the_seed():
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    augment = make_augment(splits.image_shape, flip=False)

    def first_epoch(seed):
        pipeline = training_dataset(splits.train, labels, 16, seed=seed, augment=augment, shuffle_buffer=48)
        return [(b["id"].numpy(), b["image"].numpy()) for b in pipeline]

    same, again, other = first_epoch(5), first_epoch(5), first_epoch(6)
    for (ids_a, images_a), (ids_b, images_b) in zip(same, again):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(images_a, images_b)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(same, other))


def test_keras_is_fed_without_tf_datas_autotuner():
    """With it on, each `fit`, `evaluate` and `predict` returns only at the autotuner's next
    wake-up, up to twice as long as its batches took (bench/RESULTS.md, section 16)."""
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    for dataset in (training_dataset(splits.train, labels, 16, seed=0), eval_dataset(splits.val)):
        assert dataset.options().autotune.enabled is False


def test_each_epoch_is_the_same_stream_wherever_it_starts():
    """Resuming at epoch e, or training generation k on a stored parent, sees the very
    batches of a run trained in one go: streams depend on (seed, generation, epoch) only."""
    splits = make_splits(constant_images(60), val_fraction=0.1, seed=0)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    augment = make_augment(splits.image_shape, flip=True)

    def stream(generation=1, initial_epoch=0, buffer=48):
        pipeline = training_dataset(
            splits.train, labels, 16, seed=5, augment=augment, shuffle_buffer=buffer,
            generation=generation, epochs=3, initial_epoch=initial_epoch,
        )
        return [(b["id"].numpy().tolist(), b["image"].numpy()) for b in pipeline]

    whole = stream()
    assert len(whole) == 3 * 3  # Three epochs of ceil(48 / 16) batches.
    for (ids_a, images_a), (ids_b, images_b) in zip(whole[3:], stream(initial_epoch=1)):
        assert ids_a == ids_b
        np.testing.assert_array_equal(images_a, images_b)
    assert [ids for ids, _ in stream(generation=2)] != [ids for ids, _ in whole]
    # Above the shuffle buffer, blocks are shuffled within and in a random order.
    blocked = [ids for ids, _ in stream(buffer=20)]
    epoch = sum(blocked[:3], [])
    assert sorted(epoch) == sorted(int(e["id"]) for e in splits.train)
    assert epoch != sorted(epoch)


def test_batch_augmentation_is_a_padded_crop_or_its_mirror():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (64, 8, 8, 1)).astype(np.uint8)
    augment = make_augment((8, 8, 1), flip=True)
    out = augment({"image": tf.constant(images)}, tf.constant([3, 4], tf.int64))["image"].numpy()
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])
    offsets, mirrored = set(), 0
    for image, source in zip(out, padded):
        crops = {
            (dy, dx, flip): crop
            for dy in range(3)
            for dx in range(3)
            for flip in (False, True)
            for crop in [source[dy : dy + 8, dx : dx + 8][:, ::-1] if flip else source[dy : dy + 8, dx : dx + 8]]
        }
        (match,) = [k for k, crop in crops.items() if np.array_equal(crop, image)]
        offsets.add(match[:2])
        mirrored += match[2]
    assert len(offsets) == 9 and 0 < mirrored < 64  # Every offset drawn, some flipped.
    again = augment({"image": tf.constant(images)}, tf.constant([3, 4], tf.int64))["image"].numpy()
    np.testing.assert_array_equal(out, again)
