import keras
import numpy as np
import pytest
import tensorflow as tf

from krefinery.core.losses import entropy, refined_labels, soft_target_crossentropy

RNG = np.random.default_rng(0)
LOGITS = tf.constant(RNG.normal(size=(16, 10)) * 3, tf.float32)
LABELS = tf.constant(RNG.integers(0, 10, 16), tf.int32)


def test_equals_sparse_crossentropy_on_onehot_targets():
    ours = soft_target_crossentropy(tf.one_hot(LABELS, 10), LOGITS)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, LOGITS)
    assert float(ours) == pytest.approx(float(keras_loss), rel=1e-6)


def test_soft_targets_give_kl_plus_target_entropy():
    targets = tf.nn.softmax(tf.constant(RNG.normal(size=(16, 10)), tf.float32))
    kl = keras.losses.KLDivergence()(targets, tf.nn.softmax(LOGITS))
    expected = float(kl) + float(tf.reduce_mean(entropy(targets)))
    assert float(soft_target_crossentropy(targets, LOGITS)) == pytest.approx(expected, rel=1e-5)


def test_refined_labels_are_the_softmax_at_temperature_one():
    np.testing.assert_allclose(refined_labels(LOGITS, LABELS, 1.0, 0.0), tf.nn.softmax(LOGITS), atol=1e-7)


def test_temperature_flattens_labels_and_keeps_their_ranking():
    entropies = [float(tf.reduce_mean(entropy(refined_labels(LOGITS, LABELS, t, 0.0)))) for t in (0.5, 1, 2, 8)]
    assert entropies == sorted(entropies) and entropies[0] < entropies[-1]
    assert entropies[-1] < np.log(10)
    hot, cold = refined_labels(LOGITS, LABELS, 4.0, 0.0), refined_labels(LOGITS, LABELS, 1.0, 0.0)
    np.testing.assert_array_equal(tf.argmax(hot, -1), tf.argmax(cold, -1))


def test_alpha_keeps_a_share_of_ground_truth():
    blended = refined_labels(LOGITS, LABELS, 2.0, 0.3)
    expected = 0.3 * tf.one_hot(LABELS, 10) + 0.7 * tf.nn.softmax(LOGITS / 2.0)
    np.testing.assert_allclose(blended, expected, atol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(blended, -1), np.ones(16), atol=1e-6)
    np.testing.assert_allclose(refined_labels(LOGITS, LABELS, 2.0, 1.0), tf.one_hot(LABELS, 10), atol=1e-7)


def test_entropy_of_onehot_and_uniform():
    np.testing.assert_allclose(entropy(tf.one_hot([1, 2], 4)), [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(entropy(tf.fill((1, 4), 0.25)), [np.log(4)], rtol=1e-6)
