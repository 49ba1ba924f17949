"""Refined labels of a whole dataset, from one compiled inference function per model.

Works on every Keras backend: the model runs through Keras's own `predict_on_batch`
(a `tf.function`, a `jax.jit`-ed function or eager PyTorch), and the results come back
as NumPy arrays. The tables they are written into live with the data: a `tf.Variable`
read by the tf.data pipeline (`pipeline.TFLabelTable`), or a Keras variable on the device
beside in-memory images (`memory.DeviceLabelTable`).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np

from krefinery.core.losses import refined_labels
from krefinery.progress import Progress

# The batch of every inference pass: relabelling here, evaluation in the pipelines.
INFERENCE_BATCH_SIZE = 1024


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

    def of_batch(self, images: Any, labels: Any) -> np.ndarray:
        """Refined labels of one batch (NumPy arrays or backend tensors), as NumPy."""
        return np.asarray(self.predict_on_batch({"image": images, "label": labels}), np.float32)

    def of_arrays(
        self,
        images: Any,
        labels: Any,
        batch_size: int = INFERENCE_BATCH_SIZE,
        progress: Progress | None = None,
        view: Callable[[Any], Any] | None = None,
    ) -> np.ndarray:
        """Refined labels of `images` (backend tensors, on the device), row by row, each
        chunk's rows added to `progress`; `view` maps each chunk of images to what the
        model is shown (evaluation's centre crop, say).

        Chunks are sliced where the images are, so they never pass through the host; only
        the `[n, classes]` labels come back.
        """
        chunks = []
        for start in range(0, int(images.shape[0]), batch_size):
            chunk = images[start : start + batch_size]
            chunks.append(self.of_batch(chunk if view is None else view(chunk), labels[start : start + batch_size]))
            if progress is not None:
                progress.add(len(chunks[-1]))
        return np.concatenate(chunks)
