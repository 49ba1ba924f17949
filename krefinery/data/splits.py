"""Which examples train, validate and test: fixed by a seed, the same on every input path.

NumPy only, so the in-memory path can split a source without TensorFlow; the tf.data
path (`pipeline.make_splits`) and the in-memory one (`memory.MemorySplits`) both carve
by `source_roles`, so a run's ids and splits do not depend on the path.
"""

from __future__ import annotations

import numpy as np

from krefinery.data.sources import Arrays, Files, Source
from krefinery.errors import UserError

TRAIN, VAL, TEST = 0, 1, 2


def num_examples(split: object) -> int:
    """How many examples a source's split holds (`Arrays`, `Files`, or a tf.data stream)."""
    if isinstance(split, (Arrays, Files)):
        return len(split.labels)
    from krefinery.data.pipeline import count  # A tf.data split: TensorFlow's.

    return count(split)


def num_train(source: Source, val_fraction: float, seed: int) -> int:
    """How many of `source`'s examples train, once validation (and test) are carved out."""
    roles = source_roles(source, num_examples(source.train), val_fraction, seed)
    return int(np.sum(roles == TRAIN))


def source_roles(source: Source, num_ids: int, val_fraction: float, seed: int) -> np.ndarray:
    """The role of each of `source`'s training examples: validation (and test, if the
    source has none) carved out of train by `seed`."""
    test_fraction = val_fraction if source.test is None else 0.0
    return assign_roles(num_ids, val_fraction, test_fraction, seed, source.labels, source.class_names)


def assign_roles(
    num_ids: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: np.ndarray | None = None,
    class_names: tuple[str, ...] = (),
) -> np.ndarray:
    """TRAIN, VAL or TEST per id: a seeded random subset of exact size for each role.

    Validation and a carved test split hold at least one example each. Given the labels,
    every class keeps at least one training example: ids are taken in a seeded random
    order, passing over the last training example of its class (which changes nothing
    where every class has a few examples).
    """
    num_val = max(1, round(num_ids * val_fraction))
    num_test = max(1, round(num_ids * test_fraction)) if test_fraction else 0
    splits = "validation" + (" and test" if num_test else "")
    needed = num_val + num_test + (len(class_names) if labels is not None else 1)
    if num_ids < needed:
        per_class = " (one training example per class)" if labels is not None else ""
        lower = ", or lower --val_fraction" if num_val + num_test > 2 else ""
        raise UserError(
            f"{num_ids} training examples are too few to carve out {splits} splits: "
            f"{needed} are needed here{per_class}. Add images"
            f"{' (or a test/ folder)' if num_test else ''}{lower}."
        )
    order = np.random.default_rng(seed).permutation(num_ids)
    roles = np.full(num_ids, TRAIN, np.int8)
    if labels is None:
        roles[order[:num_val]] = VAL
        roles[order[num_val : num_val + num_test]] = TEST
        return roles
    in_train = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, count in zip(class_names, in_train) if count == 0]
    if empty:
        raise UserError(f"classes {empty} have no training examples.")
    wanted = [VAL] * num_val + [TEST] * num_test
    taken = 0
    for i in order:
        if taken == len(wanted):
            break
        if in_train[labels[i]] > 1:
            in_train[labels[i]] -= 1
            roles[i] = wanted[taken]
            taken += 1
    return roles


def steps_per_epoch(num_examples: int, batch_size: int, multiple_of: int = 1) -> int:
    """Batches per epoch; with `multiple_of` (the devices that share each batch evenly),
    a last batch of fewer examples than that is left out."""
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest >= multiple_of else 0)
