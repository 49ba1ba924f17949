"""One door to every network a chain can train: `Architecture` in, a Keras model out."""

from __future__ import annotations

import keras

from krefinery.config import CIFAR_RESNET, IMAGENET_RESNETS, MOBILENETS, Architecture
from krefinery.core import resnet
from krefinery.core.blocks import check_inputs
from krefinery.core.mobilenet import build_mobilenet
from krefinery.core.resnet import build_imagenet_resnet, build_resnet


def build_network(
    architecture: Architecture, input_shape: tuple[int, int, int], num_classes: int, **options
) -> keras.Model:
    """The model `architecture` describes; `options`: `build_resnet`'s keyword arguments
    (weight decay, precision, synchronized batch normalization, name)."""
    if architecture.arch in MOBILENETS:
        return build_mobilenet(input_shape, num_classes, multiplier=architecture.multiplier, **options)
    build = build_imagenet_resnet if architecture.arch in IMAGENET_RESNETS else build_resnet
    return build(
        input_shape,
        num_classes,
        depth=architecture.depth,
        width=architecture.width,
        version=architecture.version,
        **options,
    )


def check_input_shape(architecture: Architecture, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """A `UserError` where `architecture` cannot take these images or classes: checked
    when the data is loaded, before anything is built or written."""
    if architecture.arch == CIFAR_RESNET:
        check_inputs(input_shape, num_classes, resnet.MIN_SIZE, resnet.CIFAR_NETWORK)
        return
    check_inputs(
        input_shape,
        num_classes,
        resnet.IMAGENET_MIN_SIZE,
        f"--arch={architecture.arch}, which halves the resolution five times (--image_size=HxW "
        "resizes; --arch=cifar_resnet takes images from 8x8)",
    )


def seeded_network(
    architecture: Architecture,
    seed: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    **options,
) -> keras.Model:
    """`build_network` whose initial weights are drawn from `seed` alone (it resets
    Keras's global seed), so a generation's fresh start is the same model wherever it is
    built."""
    keras.utils.set_random_seed(seed)
    return build_network(architecture, input_shape, num_classes, **options)
