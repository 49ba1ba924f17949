"""The layers every network here is built from, made one way: the precision policy, the
paper's coupled weight decay and the fused batch normalization are set in one place, so
a CIFAR ResNet, an ImageNet ResNet and a MobileNet train alike."""

from __future__ import annotations

import keras
from keras import layers

from krefinery.core.batchnorm import BatchNormalization
from krefinery.errors import UserError


def check_inputs(input_shape: tuple[int, int, int], num_classes: int, min_size: int, network: str) -> None:
    """Images the `network` (its description, for the message) can take, and classes
    enough for a classifier; otherwise a `UserError`."""
    height, width, _ = input_shape
    if min(height, width) < min_size:
        raise UserError(
            f"images of {height}x{width} are too small for {network}: they must be at least "
            f"{min_size}x{min_size}."
        )
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}.")


class Blocks:
    """Makes layers for one model: `precision` a Keras dtype policy name, `weight_decay`
    the coupled L2 penalty (`weight_decay / 2 * ||w||^2` in the model's losses, so SGD
    sees `grad + weight_decay * w`), `synchronized_batch_norm` batch statistics gathered
    across replicas (TensorFlow, under a tf.distribute strategy)."""

    def __init__(self, precision: str = "float32", weight_decay: float = 1e-4, synchronized_batch_norm: bool = False):
        self.policy = keras.DTypePolicy(precision)
        self.regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        self.synchronized = synchronized_batch_norm

    def conv(self, filters: int, kernel: int, stride: int = 1) -> layers.Conv2D:
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=self.regularizer,
            dtype=self.policy,
        )

    def depthwise(self, stride: int = 1) -> layers.DepthwiseConv2D:
        """A 3x3 depthwise convolution, without weight decay: MobileNet (Howard et al. 2017,
        section 3.3) puts little or none on its few depthwise parameters."""
        return layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False, depthwise_initializer="he_normal", dtype=self.policy
        )

    def bn(self) -> BatchNormalization:
        return BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=self.policy, synchronized=self.synchronized)

    def relu(self) -> layers.ReLU:
        return layers.ReLU(dtype=self.policy)

    def bn_relu(self, x):
        return self.relu()(self.bn()(x))

    def add(self, tensors):
        return layers.Add(dtype=self.policy)(tensors)

    def rescale(self, x):
        """Raw pixels (0..255, any dtype) to [-1, 1]: the model needs no preprocessing
        outside its graph, so an exported one serves raw images."""
        return layers.Rescaling(1 / 127.5, offset=-1.0, dtype=self.policy)(x)

    def logits(self, x, num_classes: int):
        """Global average pooling and the linear classifier; the logits are float32 in
        every precision."""
        x = layers.GlobalAveragePooling2D(dtype=self.policy)(x)
        return layers.Dense(
            num_classes,
            kernel_initializer="he_normal",
            kernel_regularizer=self.regularizer,
            dtype="float32",
            name="logits",
        )(x)
