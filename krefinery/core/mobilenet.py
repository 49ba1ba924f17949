"""MobileNet v1 (Howard et al. 2017, Table 1), with its width multiplier.

A 3x3 stride-2 convolution, then 13 depthwise-separable blocks (a 3x3 depthwise
convolution and a 1x1 pointwise one, each followed by batch normalization and ReLU),
halving the resolution five times in all, global average pooling and a linear
classifier. The multiplier (1.0, 0.75, 0.5, 0.25 in the paper; Label Refinery reports
MobileNet and MobileNet-0.25) thins every layer's filters. Like the ResNets, it takes
raw pixels and returns float32 logits; written here rather than taken from
`keras.applications` for the same reasons (`core.resnet.build_imagenet_resnet`).
"""

from __future__ import annotations

import keras

from krefinery.core.blocks import Blocks, check_inputs
from krefinery.core.resnet import IMAGENET_MIN_SIZE, IMAGENET_NETWORK
from krefinery.errors import UserError

STEM_FILTERS = 32
# (pointwise filters, stride of the depthwise convolution) of each separable block.
SEPARABLE = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


def build_mobilenet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    multiplier: float = 1.0,
    weight_decay: float = 1e-4,
    name: str | None = None,
    precision: str = "float32",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Builds a logits-producing MobileNet v1 of width `multiplier` for `input_shape`
    images; the other arguments are `core.resnet.build_resnet`'s."""
    check_inputs(input_shape, num_classes, IMAGENET_MIN_SIZE, IMAGENET_NETWORK)
    if not 0 < multiplier <= 1:
        raise UserError(f"MobileNet's width multiplier must be in (0, 1], got {multiplier}.")
    make = Blocks(precision, weight_decay, synchronized_batch_norm)

    def thin(filters: int) -> int:
        return max(1, int(filters * multiplier))

    inputs = keras.Input(shape=input_shape, name="image")
    x = make.bn_relu(make.conv(thin(STEM_FILTERS), 3, stride=2)(make.rescale(inputs)))
    for filters, stride in SEPARABLE:
        x = make.bn_relu(make.depthwise(stride)(x))
        x = make.bn_relu(make.conv(thin(filters), 1)(x))
    return keras.Model(inputs, make.logits(x, num_classes), name=name or f"mobilenet_{multiplier:g}")
