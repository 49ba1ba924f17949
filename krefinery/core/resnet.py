"""CIFAR-style ResNets (He et al. 2016, section 4.2), post-activation (v1) or pre-activation (v2).

6n+2 layers: a 3x3 stem, three stages of n basic blocks with 16, 32 and 64 filters
(times `width`) at full, half and quarter resolution, global average pooling and a
linear classifier. Shortcuts that change shape are 1x1 projections. The model takes raw
pixel values (0..255, any integer or float dtype) and returns logits, so an exported
model needs no preprocessing outside its graph.
"""

from __future__ import annotations

import keras
from keras import layers

from krefinery.config import Architecture, check_depth
from krefinery.core.batchnorm import BatchNormalization
from krefinery.errors import UserError

STAGE_FILTERS = (16, 32, 64)
MIN_SIZE = 8


def build_resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 20,
    width: int = 1,
    version: int = 1,
    weight_decay: float = 1e-4,
    name: str | None = None,
    precision: str = "float32",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Builds a logits-producing ResNet-`depth` for `input_shape` images.

    `weight_decay` is the paper's coupled L2 penalty: the model's `losses` add
    `weight_decay / 2 * ||w||^2` over conv and dense kernels, so SGD sees
    `grad + weight_decay * w`. `precision` is a Keras dtype policy name
    (`mixed_bfloat16`: bfloat16 compute, float32 weights); it is set per layer rather
    than globally, so models of different precisions can live in one process. The
    logits are always float32. Batch normalization runs TensorFlow's fused kernel on
    the TensorFlow backend (`core.batchnorm`); `synchronized_batch_norm` (TensorFlow,
    under a tf.distribute strategy) gathers batch statistics across replicas instead, as
    one device computes them over the whole batch.
    """
    blocks = check_depth(depth)
    height, width_px, channels = input_shape
    if min(height, width_px) < MIN_SIZE:
        raise UserError(
            f"images of {height}x{width_px} are too small for a CIFAR-style ResNet, "
            f"which halves the resolution twice: they must be at least {MIN_SIZE}x{MIN_SIZE}."
        )
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}.")
    if version not in (1, 2):
        raise UserError(f"ResNet version must be 1 or 2, got {version}.")
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    policy = keras.DTypePolicy(precision)

    def conv(filters: int, kernel: int, stride: int = 1) -> layers.Conv2D:
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer,
            dtype=policy,
        )

    def bn() -> BatchNormalization:
        return BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype=policy, synchronized=synchronized_batch_norm
        )

    def block_v1(x, filters: int, stride: int):
        shortcut = x
        y = layers.ReLU(dtype=policy)(bn()(conv(filters, 3, stride)(x)))
        y = bn()(conv(filters, 3)(y))
        if stride != 1 or x.shape[-1] != filters:
            shortcut = bn()(conv(filters, 1, stride)(x))
        return layers.ReLU(dtype=policy)(layers.Add(dtype=policy)([y, shortcut]))

    def block_v2(x, filters: int, stride: int):
        activated = layers.ReLU(dtype=policy)(bn()(x))
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = conv(filters, 1, stride)(activated)
        y = conv(filters, 3, stride)(activated)
        y = conv(filters, 3)(layers.ReLU(dtype=policy)(bn()(y)))
        return layers.Add(dtype=policy)([y, shortcut])

    block = block_v1 if version == 1 else block_v2
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, dtype=policy)(inputs)
    x = conv(STAGE_FILTERS[0] * width, 3)(x)
    if version == 1:
        x = layers.ReLU(dtype=policy)(bn()(x))
    for stage, filters in enumerate(STAGE_FILTERS):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block(x, filters * width, stride)
    if version == 2:
        x = layers.ReLU(dtype=policy)(bn()(x))
    x = layers.GlobalAveragePooling2D(dtype=policy)(x)
    logits = layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        dtype="float32",
        name="logits",
    )(x)
    return keras.Model(inputs, logits, name=name or f"resnet{depth}_v{version}")


def seeded_resnet(
    architecture: Architecture,
    seed: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    **options,
) -> keras.Model:
    """`build_resnet` of `architecture` whose initial weights are drawn from `seed` alone
    (it resets Keras's global seed), so a generation's fresh start is the same model
    wherever it is built. `options`: `build_resnet`'s keyword arguments."""
    keras.utils.set_random_seed(seed)
    return build_resnet(
        input_shape,
        num_classes,
        depth=architecture.depth,
        width=architecture.width,
        version=architecture.version,
        **options,
    )
