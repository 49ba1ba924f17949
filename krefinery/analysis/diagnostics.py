"""What a relabel did to the training labels, in plain numpy (no TensorFlow, no I/O).

Rows are training examples, columns classes; `refined` are the targets the next
generation trains on (after temperature and alpha), `previous` the ones the last
generation trained on (one-hot ground truth for generation 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Refined labels are float32 softmaxes: a probability that underflowed to 0 is taken as
# this, so that the KL divergence stays finite.
EPSILON = 1e-12


@dataclasses.dataclass(frozen=True)
class LabelStats:
    """Summary figures of one label table, and the per-example figures behind them."""

    agreement: float  # Share whose argmax is the ground-truth class.
    mean_entropy: float  # Nats.
    mean_confidence: float  # Mean top-1 probability.
    kl_from_previous: float | None  # Mean KL(previous || refined), nats; None without previous.
    argmax_changed: int | None  # Examples whose argmax differs from the previous labels'.
    confidence: np.ndarray  # [examples] top-1 probability.
    ground_truth_probability: np.ndarray  # [examples] probability on the true class.


def label_stats(
    refined: np.ndarray, ground_truth: np.ndarray, previous: np.ndarray | None = None
) -> LabelStats:
    """Agreement, entropy, confidence and, given the previous labels, how far they moved."""
    refined = np.asarray(refined, np.float64)
    rows = np.arange(len(refined))
    top = refined.argmax(-1)
    logs = np.log(np.clip(refined, EPSILON, None))
    # NaN rows (a diverged model's labels) stay NaN rather than reading as one-hot.
    entropy = -np.sum(np.where(refined == 0, 0.0, refined * logs), axis=-1)
    kl = changed = None
    if previous is not None:
        previous = np.asarray(previous, np.float64)
        previous_logs = np.log(np.clip(previous, EPSILON, None))
        terms = np.where(previous > 0, previous * (previous_logs - logs), 0.0)
        kl = float(np.mean(np.sum(terms, axis=-1)))
        changed = int(np.sum(previous.argmax(-1) != top))
    confidence = refined[rows, top]
    return LabelStats(
        agreement=float(np.mean(top == ground_truth)),
        mean_entropy=float(np.mean(entropy)),
        mean_confidence=float(np.mean(confidence)),
        kl_from_previous=kl,
        argmax_changed=changed,
        confidence=confidence.astype(np.float32),
        ground_truth_probability=refined[rows, ground_truth].astype(np.float32),
    )


def moved_furthest(refined: np.ndarray, ground_truth: np.ndarray, count: int) -> np.ndarray:
    """Row indices of the `count` examples whose labels put least probability on the truth.

    That is the largest KL(one-hot truth || refined): the refinery's strongest claims
    that an image shows something other than its label (the paper's Figure 4).
    """
    truth = np.asarray(refined)[np.arange(len(refined)), ground_truth]
    return np.argsort(truth, kind="stable")[:count]


def top_classes(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most probable classes of one example, as (class id, probability), best first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [(int(c), float(probabilities[c])) for c in order]
