"""Batch normalization through TensorFlow's fused kernel, where it applies.

On TensorFlow, Keras 3 computes batch normalization from primitive ops (the moments, then
the normalization and, under `mixed_bfloat16`, casts to float32 and back), and those ops
took as much of the training step's op time as the convolutions (bench/RESULTS.md).
`BatchNormalization` is Keras's layer, with its variables, its moving-average rule and
its biased batch variance, that runs TensorFlow's fused kernel (`FusedBatchNormV3`, one
op forward and one backward) for 4-D channels-last inputs on the TensorFlow backend.
Everything else (JAX, PyTorch, statistics synchronized across replicas, renorm, masks,
other shapes) is Keras's own code, so models and weight files are interchangeable.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="krefinery")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, fused on TensorFlow (see the module's docstring).

    The name is Keras's, so a layer gets the same default name (`batch_normalization_<i>`)
    and weight files are read and written under the same paths either way.
    """

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], "float32")
        beta = self.beta if self.center else tf.zeros([channels], "float32")
        if not (training and self.trainable):
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False,
            )
            return outputs
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, is_training=True
        )
        # The kernel normalizes with the biased variance but returns the unbiased one
        # (Bessel's correction); Keras averages the biased one.
        count = tf.cast(tf.size(inputs) // channels, "float32")
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

    def _fused(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16", "float16")
        )


def with_keras_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of `model` whose batch normalization is Keras's own layer, with the same
    configuration and weights: a `.keras` file of it loads with Keras alone, where this
    package is not installed."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def with_fused_batch_norm(model: keras.Model) -> keras.Model:
    """The converse of `with_keras_batch_norm`: a copy of `model` whose Keras batch
    normalization layers are this module's, so that a model read back from a file (a
    refinery, `--refinery_model`) computes with the same kernels, and so gives the same
    labels, as the model it was saved from."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if type(layer) is keras.layers.BatchNormalization:
            return BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
