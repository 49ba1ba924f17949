"""Augmentation throughput on one core: `make_augment` on batches of 128 32x32x3 images.

    python -m bench.augment

Both as a traced function and inside tf.data with a one-thread pool, as training runs it.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from bench.common import machine
from krefinery.data.pipeline import make_augment

BATCH, STEPS, ROUNDS = 128, 200, 5


def main() -> None:
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    print(f"# Augmentation, 32x32x3, batch {BATCH}, one core; {machine()}")
    augment = make_augment((32, 32, 3), flip=True)
    images = np.random.default_rng(0).integers(0, 255, (BATCH, 32, 32, 3), dtype=np.uint8)
    batch = {"image": tf.constant(images), "id": tf.range(BATCH, dtype=tf.int64)}
    step = tf.function(augment)
    step(batch, tf.constant([0, 0], tf.int64))
    rates = []
    for round_ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(STEPS):
            out = step(batch, tf.constant([round_, i], tf.int64))
        out["image"].numpy()
        rates.append(STEPS * BATCH / (time.perf_counter() - start))
    print(f"traced function: {statistics.median(rates):,.0f} images/s (median of {ROUNDS})")
    dataset = tf.data.Dataset.from_tensors(batch).repeat(10 * STEPS).enumerate()
    dataset = dataset.map(lambda i, b: augment(b, tf.stack([i, i])))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    start = time.perf_counter()
    count = sum(BATCH for _ in dataset.with_options(options))
    print(f"tf.data, one thread: {count / (time.perf_counter() - start):,.0f} images/s")


if __name__ == "__main__":
    main()
