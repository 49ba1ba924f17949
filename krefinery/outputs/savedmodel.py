"""The SavedModel a server loads: the classifier behind a signature that takes raw images."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Sequence

import keras
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from krefinery.data import crops
from krefinery.outputs.export import INPUT_NAME, SIGNATURE


class ServingModule(tf.Module):
    """The classifier with its serving signature: raw uint8 images in, classes out.

    The classifier rescales 0..255 pixels itself, and the signature cuts evaluation's
    `view` (`data.crops`), so serving needs no preprocessing outside the graph. `class_names` (a string variable) keeps the full class list,
    so a client can read every name, not just the predicted one.

    Under the JAX backend the classifier is not TensorFlow code: Keras's `ExportArchive`
    converts it (jax2tf) into a TensorFlow function over TensorFlow copies of its
    weights, which this module keeps. The SavedModel then serves the same way.
    """

    def __init__(
        self,
        classifier: keras.Model,
        class_names: Sequence[str],
        image_shape: Sequence[int],
        view: crops.View = None,
    ):
        super().__init__(name="krefinery_classifier")
        self.class_names = tf.Variable(
            list(class_names), trainable=False, dtype=tf.string, name="class_names"
        )
        spec = tf.TensorSpec([None, *image_shape], tf.uint8, name=INPUT_NAME)
        if keras.backend.backend() == "tensorflow":
            self.classifier = classifier
            self.logits = lambda images: classifier(images, training=False)
        else:
            archive = keras.export.ExportArchive()
            archive.track(classifier)
            self.logits = archive.add_endpoint(
                "logits", lambda images: classifier(images, training=False), [spec]
            )
            self.classifier_variables = list(archive.variables)

        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._serve(crops.view(tnp, images, view))  # The view's indices: constants.

        self.serve = tf.function(serve, input_signature=[spec])

    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(self.logits(images), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.class_names, class_ids),
        }


def saved_model_writer(
    classifier: keras.Model, class_names: Sequence[str], image_shape: Sequence[int], view: crops.View = None
) -> Callable[[Path], None]:
    """A function that writes `classifier`'s SavedModel, signature and class names into
    a folder (the export's temporary version folder)."""
    module = ServingModule(classifier, class_names, image_shape, view)

    def save(folder: Path) -> None:
        try:
            tf.saved_model.save(module, os.fspath(folder), signatures={SIGNATURE: module.serve})
        except tf.errors.ResourceExhaustedError as error:
            # TensorFlow's writers report a full disk (or a quota) so, not as an OSError.
            if "OOM" in str(error):
                raise  # Out of memory, not of disk.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(folder)) from error

    return save
