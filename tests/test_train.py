"""The Trainer's API: whose labels a step trains on, and that changing them takes effect."""

import math

import numpy as np
import pytest
from helpers import classifier_builder, random_images

from krefinery.config import Config, Refinement
from krefinery.core.losses import entropy, refined_labels
from krefinery.core.trainer import Trainer, make_optimizer
from krefinery.data.pipeline import (
    eval_dataset,
    make_splits,
    onehot_table,
    training_dataset,
)


def test_teacher_and_refinement_changes_reach_the_compiled_step():
    splits = make_splits(random_images(), val_fraction=0.2, seed=0)
    build = classifier_builder(splits.image_shape, splits.num_classes)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    train_ds = training_dataset(splits.train, labels, 16, seed=0)  # No augmentation.
    # The teacher may be of another architecture than the student (a deeper refinery).
    build_deeper = classifier_builder(splits.image_shape, splits.num_classes, depth=14)
    trainer = Trainer(build(0), teacher=build_deeper(1))
    trainer.compile(make_optimizer(Config(epochs=1, warmup_epochs=0), math.ceil(splits.num_train / 16)))
    trained = build_deeper(2)  # Stands in for a trained refinery: weights the teacher lacks.

    def teacher_entropy(temperature):
        rows = [
            entropy(refined_labels(trained(b["image"], training=False), b["label"], temperature, 0.0))
            for b in eval_dataset(splits.train)
        ]
        return float(np.mean(np.concatenate(rows)))

    def label_entropy():
        return trainer.fit(train_ds, epochs=1, verbose=0).history["label_entropy"][-1]

    assert not trainer.teaching and label_entropy() == 0.0  # One-hot table.
    trainer.use_teacher(trained, Refinement(temperature=1.0))
    assert trainer.teaching
    for mine, theirs in zip(trainer.teacher.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert label_entropy() == pytest.approx(teacher_entropy(1.0), rel=1e-4)
    trainer.use_teacher(trained, Refinement(temperature=4.0))  # Flatter: traced anew.
    assert label_entropy() == pytest.approx(teacher_entropy(4.0), rel=1e-4)
    assert teacher_entropy(4.0) > teacher_entropy(1.0) + 0.05
    trainer.use_teacher(None)
    assert not trainer.teaching and label_entropy() == 0.0


def test_use_teacher_needs_a_teacher_slot():
    splits = make_splits(random_images(), val_fraction=0.2, seed=0)
    build = classifier_builder(splits.image_shape, splits.num_classes)
    with pytest.raises(ValueError, match="teacher slot"):
        Trainer(build(0)).use_teacher(build(1), Refinement())
