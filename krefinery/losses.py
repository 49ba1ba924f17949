"""The two formulas of Label Refinery: how labels are refined, and how a model is scored on them."""

from __future__ import annotations

import tensorflow as tf


def refined_labels(
    logits: tf.Tensor, labels: tf.Tensor, temperature: float, alpha: float
) -> tf.Tensor:
    """`alpha * onehot(labels) + (1 - alpha) * softmax(logits / temperature)`, in float32.

    A temperature above 1 flattens the refined labels (more weight on the classes the
    refining model finds similar); alpha keeps a share of the ground truth.
    """
    logits = tf.cast(logits, tf.float32)
    refined = tf.nn.softmax(logits / temperature, axis=-1)
    if alpha == 0:
        return refined
    onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float32)
    return alpha * onehot + (1.0 - alpha) * refined


def soft_target_crossentropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of `-sum_c targets_c * log softmax(logits)_c`, in float32.

    With one-hot targets this is the usual sparse cross-entropy; with soft targets it is
    the KL divergence to them up to a constant, which is what each generation minimises.
    """
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(tf.cast(targets, tf.float32) * log_probs, axis=-1))


def entropy(probabilities: tf.Tensor) -> tf.Tensor:
    """Per-row entropy in nats; 0 for a one-hot label, log(C) for a uniform one, NaN for
    a row holding NaN (which must not read as a clean label)."""
    p = tf.cast(probabilities, tf.float32)
    return -tf.reduce_sum(tf.where(p == 0, 0.0, p * tf.math.log(p)), axis=-1)
