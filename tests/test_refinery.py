import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import classifier_builder, every_generation, random_images

from krefinery.config import Config, Refinement
from krefinery.core.label_refinery import LabelRefinery
from krefinery.core.losses import entropy, refined_labels
from krefinery.core.refinement import generation_seed
from krefinery.core.trainer import Trainer, make_optimizer
from krefinery.data.pipeline import (
    eval_dataset,
    make_splits,
    onehot_table,
    training_dataset,
)

EPOCHS, BATCH = 2, 16


class Snapshots(keras.callbacks.Callback):
    """Records weights and optimizer state where each generation begins and ends."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = [], []

    def _state(self):
        optimizer = self.model.optimizer
        return {
            "weights": self.model.classifier.get_weights(),
            "iterations": int(optimizer.iterations.numpy()),
            "momenta": [v.numpy() for v in optimizer.variables if v.name.endswith("_momentum")],
            "learning_rate": float(optimizer.learning_rate.numpy()),
            "loss_scale": float(optimizer.dynamic_scale.numpy())
            if hasattr(optimizer, "dynamic_scale")
            else None,
        }

    def on_train_begin(self, logs=None):
        self.begin.append(self._state())

    def on_train_end(self, logs=None):
        self.end.append(self._state())


def make_run(online=False, temperature=1.0, augment=None, precision="float32", jit_compile=False):
    splits = make_splits(random_images(), val_fraction=0.2, seed=0)
    build = classifier_builder(splits.image_shape, splits.num_classes, precision)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    train_ds = training_dataset(splits.train, labels, BATCH, seed=0, augment=augment, shuffle_buffer=splits.num_train)
    trainer = Trainer(build(0), teacher=build(0) if online else None)
    steps = math.ceil(splits.num_train / BATCH)
    config = Config(epochs=EPOCHS, batch_size=BATCH, warmup_epochs=1, learning_rate=0.05)
    trainer.compile(make_optimizer(config, steps, precision), jit_compile=jit_compile)
    refinery = LabelRefinery(
        labels, every_generation(build), Refinement(2, temperature=temperature), seed=0,
        jit_compile=jit_compile,
    )
    return splits, build, labels, train_ds, trainer, refinery, steps


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_each_generation_starts_from_fresh_weights_and_a_fresh_optimizer():
    splits, build, labels, train_ds, trainer, refinery, steps = make_run()
    snapshots = Snapshots()
    for _ in range(2):
        trainer.fit(train_ds, epochs=EPOCHS, callbacks=[refinery, snapshots], verbose=0)

    for generation, begin in enumerate(snapshots.begin, start=1):
        assert_weights_equal(begin["weights"], build(generation_seed(0, generation)).get_weights())
        assert begin["iterations"] == 0
        assert begin["learning_rate"] == 0.0  # The warm-up starts again from zero.
        assert all(not np.any(m) for m in begin["momenta"])
    first_end, second_begin = snapshots.end[0], snapshots.begin[1]
    assert len(second_begin["momenta"]) == len(trainer.classifier.trainable_variables)
    assert first_end["iterations"] == EPOCHS * steps
    assert any(np.any(m) for m in first_end["momenta"])
    assert first_end["learning_rate"] < 0.05
    assert not np.allclose(first_end["weights"][0], second_begin["weights"][0])
    assert not np.allclose(
        build(generation_seed(0, 1)).get_weights()[0], second_begin["weights"][0]
    ), "two generations must not draw the same initial weights"

    # Offline relabelling wrote generation 1's softmax into the table, by id.
    generation_one = build(0)
    generation_one.set_weights(first_end["weights"])
    for batch in eval_dataset(splits.train):
        expected = tf.nn.softmax(generation_one(batch["image"], training=False))
        np.testing.assert_allclose(labels.gather(batch["id"]), expected, atol=1e-5)

    with pytest.raises(RuntimeError, match="already"):
        trainer.fit(train_ds, epochs=1, callbacks=[refinery], verbose=0)


def test_online_mode_labels_with_the_frozen_previous_generation():
    splits, build, labels, train_ds, trainer, refinery, _ = make_run(online=True, temperature=3.0)
    table_before = labels.values()
    snapshots = Snapshots()
    trainer.fit(train_ds, epochs=EPOCHS, callbacks=[refinery, snapshots], verbose=0)
    assert trainer.teaching
    assert_weights_equal(trainer.teacher.get_weights(), snapshots.end[0]["weights"])

    history = trainer.fit(train_ds, epochs=1, callbacks=[refinery, snapshots], verbose=0)
    # The teacher stayed frozen while generation 2 trained...
    assert_weights_equal(trainer.teacher.get_weights(), snapshots.end[0]["weights"])
    assert not np.allclose(trainer.classifier.get_weights()[0], snapshots.end[0]["weights"][0])
    # ...the offline table was never touched...
    np.testing.assert_array_equal(labels.values(), table_before)
    # ...and generation 2 trained on the teacher's refined labels of its batches.
    targets, truth = [], []
    for batch in eval_dataset(splits.train):
        logits = trainer.teacher(batch["image"], training=False)
        targets.append(refined_labels(logits, batch["label"], 3.0, 0.0))
        truth.append(batch["label"])
    targets, truth = tf.concat(targets, 0), tf.concat(truth, 0)
    expected_entropy = float(tf.reduce_mean(entropy(targets)))
    expected_agreement = float(tf.reduce_mean(tf.cast(tf.argmax(targets, -1, output_type=tf.int32) == truth, tf.float32)))
    assert expected_entropy > 0.1
    assert history.history["label_entropy"][-1] == pytest.approx(expected_entropy, rel=1e-4)
    assert history.history["label_agreement"][-1] == pytest.approx(expected_agreement, abs=1e-6)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_generations_restart_cleanly_and_keep_float32_labels(precision):
    # XLA once (with bfloat16, as on GPUs); compiling costs time on this CPU.
    splits, build, labels, train_ds, trainer, refinery, steps = make_run(
        precision=precision, jit_compile=precision == "mixed_bfloat16"
    )
    compute = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[precision]
    conv = next(l for l in trainer.classifier.layers if isinstance(l, keras.layers.Conv2D))
    assert conv.compute_dtype == compute and conv.kernel.dtype == "float32"
    assert trainer.classifier.get_layer("logits").compute_dtype == "float32"
    optimizer = trainer.optimizer
    snapshots = Snapshots()
    histories = [trainer.fit(train_ds, epochs=EPOCHS, callbacks=[refinery, snapshots], verbose=0)]
    if precision == "mixed_float16":
        optimizer.dynamic_scale.assign(7.0)  # As if generation 1 had met overflows.
    histories.append(
        trainer.fit(train_ds, epochs=EPOCHS, callbacks=[refinery, snapshots], verbose=0)
    )
    assert all(np.isfinite(h.history["loss"]).all() for h in histories)
    second = snapshots.begin[1]
    assert second["iterations"] == 0 and all(not np.any(m) for m in second["momenta"])
    assert_weights_equal(second["weights"], build(generation_seed(0, 2)).get_weights())
    if precision == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert second["loss_scale"] == optimizer.initial_scale  # The loss scale restarts too.
    # The refined labels stay float32 distributions whatever the compute precision.
    assert labels.values().dtype == np.float32
    train_rows = np.concatenate([b["id"] for b in eval_dataset(splits.train).as_numpy_iterator()])
    np.testing.assert_allclose(labels.values()[train_rows].sum(axis=1), 1.0, atol=1e-5)
    assert labels.values()[train_rows].max(axis=1).min() < 1.0  # Soft, not one-hot.
