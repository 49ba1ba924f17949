"""TensorBoard logs of a run, read back with TensorBoard's own event reader."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from krefinery import summaries
from krefinery.datasets import load_source
from krefinery.diagnostics import label_stats
from krefinery.pipeline import eval_dataset, make_splits
from krefinery.resnet import build_resnet


def read_run(path) -> dict[str, dict[int, np.ndarray]]:
    """`{tag: {step: value}}` of one sub-run; tf.summary stores everything as tensors."""
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {
        tag: {event.step: tf.make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)}
        for tag in accumulator.Tags()["tensors"]
    }


def test_each_generation_has_epoch_curves_matching_results(digits_run):
    board = digits_run["workdir"] / "tensorboard"
    for entry in digits_run["results"]["generations"]:
        train = read_run(board / f"gen_{entry['generation']}" / "train")
        validation = read_run(board / f"gen_{entry['generation']}" / "validation")
        for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
            assert sorted(train[tag]) == [0, 1], tag
        for tag in ("epoch_loss", "epoch_accuracy"):
            assert sorted(validation[tag]) == [0, 1], tag
        assert float(validation["epoch_accuracy"][1]) == pytest.approx(entry["val_accuracy"], abs=1e-7)
        assert float(train["epoch_accuracy"][1]) == pytest.approx(entry["train_accuracy"], abs=1e-7)
        # Cosine decay from 0.1 over two epochs, read at each epoch's end; every generation restarts it.
        assert float(train["epoch_learning_rate"][0]) == pytest.approx(0.05, rel=1e-5)
        assert float(train["epoch_learning_rate"][1]) == pytest.approx(0.0, abs=1e-7)


def test_cross_generation_view_matches_results(digits_run):
    board = digits_run["workdir"] / "tensorboard" / "generations"
    generations = digits_run["results"]["generations"]
    for run, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
        values = read_run(board / run)[summaries.GENERATION_TAG]
        assert {step: float(v) for step, v in values.items()} == pytest.approx({g["generation"]: g[key] for g in generations})


def test_relabel_diagnostics_describe_the_labels_generation_two_trained_on(digits_run):
    results = digits_run["results"]
    logged = read_run(digits_run["workdir"] / "tensorboard" / "refinery")
    # Recompute generation 1's refined labels (T = 1, alpha = 0) from its saved weights.
    splits = make_splits(load_source("digits"), val_fraction=0.1, seed=0)
    classifier = build_resnet(
        splits.image_shape, splits.num_classes, depth=8, precision=results["runtime"]["precision"]
    )
    classifier.load_weights(digits_run["workdir"] / "gen_1.weights.h5")
    ids, truth, refined = [], [], []
    for batch in eval_dataset(splits.train):
        ids.append(batch["id"].numpy())
        truth.append(batch["label"].numpy())
        refined.append(keras.ops.softmax(classifier(batch["image"], training=False)).numpy())
    ids, truth, refined = np.concatenate(ids), np.concatenate(truth), np.concatenate(refined)
    onehot = np.eye(splits.num_classes, dtype=np.float32)[truth]
    expected = label_stats(refined, truth, onehot)

    tags = summaries.LABEL_TAGS
    # Step 1: the ground truth generation 1 trained on.
    assert float(logged[tags["agreement"]][1]) == 1.0
    assert float(logged[tags["mean_entropy"]][1]) == 0.0
    assert float(logged[tags["mean_confidence"]][1]) == 1.0
    # Step 2: generation 1's labels, which generation 2 trained on.
    assert sorted(logged[tags["kl_from_previous"]]) == sorted(logged[tags["argmax_changed"]]) == [2]
    assert float(logged[tags["agreement"]][2]) == pytest.approx(expected.agreement, abs=1e-6)
    assert float(logged[tags["mean_entropy"]][2]) == pytest.approx(expected.mean_entropy, rel=1e-4)
    assert float(logged[tags["mean_confidence"]][2]) == pytest.approx(expected.mean_confidence, rel=1e-4)
    # -log p of small probabilities magnifies bfloat16 rounding, which differs between the
    # run's compiled relabel pass and this eager recomputation (2^-8 relative per value).
    kl_tolerance = 1e-4 if results["runtime"]["precision"] == "float32" else 4e-3
    assert float(logged[tags["kl_from_previous"]][2]) == pytest.approx(expected.kl_from_previous, rel=kl_tolerance)
    assert int(logged[tags["argmax_changed"]][2]) == expected.argmax_changed == np.sum(refined.argmax(-1) != truth)
    second = results["generations"][1]
    assert float(logged[tags["agreement"]][2]) == pytest.approx(second["train_label_agreement"], abs=1e-6)
    assert float(logged[tags["mean_entropy"]][2]) == pytest.approx(second["train_label_entropy"], rel=1e-4)
    assert 0.0 < expected.agreement < 1.0 and expected.mean_entropy > 0.0

    # Histograms count every training example once.
    for tag in (summaries.CONFIDENCE_HISTOGRAM, summaries.TRUTH_HISTOGRAM):
        assert sorted(logged[tag]) == [1, 2]
        assert logged[tag][2][:, 2].sum() == len(ids) == splits.num_train

    # The image grid and its table show the examples furthest from their ground truth.
    width, height, png = logged[summaries.MOVED_IMAGE][2]
    image = tf.image.decode_png(png)
    assert image.shape[:2] == (int(height), int(width))
    table = logged[summaries.MOVED_TABLE][2].item().decode().splitlines()
    furthest = np.argsort(refined[np.arange(len(truth)), truth], kind="stable")[:8]
    rows = [line.split("|")[1:-1] for line in table[2:]]
    assert [int(row[1]) for row in rows] == [int(i) for i in ids[furthest]]
    assert [row[2].strip() for row in rows] == [str(t) for t in truth[furthest]]
    top = refined[furthest[0]].argmax()
    assert rows[0][4].strip().startswith(f"{top} {refined[furthest[0], top]:.2f}")


def test_accuracy_chart_is_written(digits_run):
    png = (digits_run["workdir"] / "accuracy.png").read_bytes()
    image = tf.image.decode_png(png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert math.prod(image.shape) > 0


def test_label_stats_on_hand_computed_labels():
    previous = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    refined = np.array([[0.5, 0.5], [0.0, 1.0], [0.2, 0.8]])
    stats = label_stats(refined, np.array([0, 1, 0]), previous)
    assert stats.agreement == pytest.approx(2 / 3)  # argmax of [0.5, 0.5] is class 0.
    assert stats.mean_confidence == pytest.approx((0.5 + 1.0 + 0.8) / 3)
    assert stats.mean_entropy == pytest.approx((math.log(2) + 0 - 0.2 * math.log(0.2) - 0.8 * math.log(0.8)) / 3)
    assert stats.kl_from_previous == pytest.approx((math.log(2) + 0 + math.log(5)) / 3)
    assert stats.argmax_changed == 1
    np.testing.assert_allclose(stats.ground_truth_probability, [0.5, 1.0, 0.2])


def test_online_relabel_reports_the_teachers_labels_of_unaugmented_images():
    from helpers import classifier_builder, random_images
    from krefinery.config import Config
    from krefinery.losses import refined_labels
    from krefinery.pipeline import onehot_table, training_dataset
    from krefinery.refinery import LabelRefinery
    from krefinery.train import Trainer, make_optimizer

    splits = make_splits(random_images(), val_fraction=0.2, seed=0)
    build = classifier_builder(splits.image_shape, splits.num_classes)
    labels = onehot_table(splits.train, splits.num_ids, splits.num_classes)
    train_ds = training_dataset(splits.train, labels, 16, seed=0)
    trainer = Trainer(build(0), teacher=build(0), temperature=3.0)
    trainer.compile(make_optimizer(Config(epochs=1, warmup_epochs=0), math.ceil(splits.num_train / 16)))
    seen = []
    refinery = LabelRefinery(
        labels, eval_dataset(splits.train), build, 3, temperature=3.0,
        on_relabel=lambda k, previous, refined: seen.append((k, previous, refined)),
    )
    for _ in range(2):
        trainer.fit(train_ds, epochs=1, callbacks=[refinery], verbose=0)

    def teacher_labels():
        table = labels.numpy()
        for batch in eval_dataset(splits.train):
            logits = trainer.teacher(batch["image"], training=False)
            table[batch["id"].numpy()] = refined_labels(logits, batch["label"], 3.0, 0.0).numpy()
        return table

    assert [k for k, _, _ in seen] == [1, 2]
    np.testing.assert_array_equal(seen[0][1], labels.numpy())  # Generation 1 trained on ground truth.
    np.testing.assert_array_equal(seen[1][1], seen[0][2])  # Each relabel starts from the last one's labels.
    np.testing.assert_allclose(seen[1][2], teacher_labels(), atol=1e-6)
    assert not np.allclose(seen[1][2], seen[1][1], atol=1e-3)
