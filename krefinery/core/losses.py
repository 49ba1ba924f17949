"""The two formulas of Label Refinery: how labels are refined, and how a model is scored on them.

Written with `keras.ops`, so the same code runs inside the training step of every Keras
backend (TensorFlow, JAX, PyTorch). Each works in float32 whatever the dtype policy:
softmaxes and logarithms of bfloat16 or float16 logits lose the small probabilities that
refined labels are made of.
"""

from __future__ import annotations

from typing import Any

from keras import ops

Tensor = Any  # A backend tensor or a NumPy array.


def refined_labels(logits: Tensor, labels: Tensor, temperature: float, alpha: float) -> Tensor:
    """`alpha * onehot(labels) + (1 - alpha) * softmax(logits / temperature)`, in float32.

    A temperature above 1 flattens the refined labels (more weight on the classes the
    refining model finds similar); alpha keeps a share of the ground truth.
    """
    logits = ops.cast(logits, "float32")
    refined = ops.softmax(logits / temperature, axis=-1)
    if alpha == 0:
        return refined
    onehot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
    return alpha * onehot + (1.0 - alpha) * refined


def soft_target_crossentropy(targets: Tensor, logits: Tensor) -> Tensor:
    """Mean over the batch of `-sum_c targets_c * log softmax(logits)_c`, in float32.

    With one-hot targets this is the usual sparse cross-entropy; with soft targets it is
    the KL divergence to them up to a constant, which is what each generation minimises.
    """
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return -ops.mean(ops.sum(ops.cast(targets, "float32") * log_probs, axis=-1))


def entropy(probabilities: Tensor) -> Tensor:
    """Per-row entropy in nats; 0 for a one-hot label, log(C) for a uniform one, NaN for
    a row holding NaN (which must not read as a clean label)."""
    p = ops.cast(probabilities, "float32")
    zero = p == 0
    # log(1) = 0 stands in for log(0), so that no 0 * -inf (NaN) is ever formed.
    return -ops.sum(ops.where(zero, 0.0, p * ops.log(ops.where(zero, 1.0, p))), axis=-1)
