"""Refined labels of a whole dataset, from one compiled inference function per model.

Works on every Keras backend: the model runs through Keras's own `predict_on_batch`
(a `tf.function`, a `jax.jit`-ed function or eager PyTorch), and the results come back
as NumPy arrays. The label table stays a `tf.Variable`, because the tf.data pipeline
reads it.
"""

from __future__ import annotations

from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from krefinery.losses import refined_labels


class RefinedLabels(keras.Model):
    """`refined_labels(model(images), labels, temperature, alpha)`, as one Keras model.

    Being a `keras.Model`, its `predict_on_batch` is compiled by Keras for the backend in
    use (with XLA if `jit_compile`), and traced once per input shape however many times
    it labels data.
    `model`'s variables are shared, not copied: it labels with the weights `model` holds
    when it runs.
    """

    def __init__(
        self,
        model: keras.Model,
        temperature: float,
        alpha: float,
        jit_compile: bool | None = None,
    ):
        super().__init__(name="refined_labels")
        self.labeller = model
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        if jit_compile is not None:  # None: Keras's choice for the backend and device.
            self.jit_compile = jit_compile

    def call(self, inputs, training=False):
        logits = self.labeller(inputs["image"], training=False)
        return refined_labels(logits, inputs["label"], self.temperature, self.alpha)

    def batches(self, examples: tf.data.Dataset) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(ids, targets)` of each batch of `examples` (dicts with "id", "image", "label")."""
        for batch in examples.as_numpy_iterator():
            inputs = {"image": batch["image"], "label": batch["label"]}
            yield batch["id"], np.asarray(self.predict_on_batch(inputs), np.float32)

    def table(self, examples: tf.data.Dataset, into: np.ndarray) -> np.ndarray:
        """`into` with the rows of `examples`' ids replaced by their refined labels."""
        for ids, targets in self.batches(examples):
            into[ids] = targets
        return into


def refine_table(
    labeller: RefinedLabels, examples: tf.data.Dataset, labels: tf.Variable
) -> None:
    """Writes the refined labels of every example in `examples` into `labels`, by id.

    Rows of ids not in `examples` (validation and test images) are left as they are.
    """
    for ids, targets in labeller.batches(examples):
        labels.scatter_nd_update(ids[:, None], targets)
