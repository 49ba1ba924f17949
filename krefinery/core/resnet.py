"""ResNets (He et al. 2016), post-activation (v1) or pre-activation (v2), in two shapes.

CIFAR-style (section 4.2), `build_resnet`: 6n+2 layers, a 3x3 stem, three stages of n
basic blocks with 16, 32 and 64 filters (times `width`) at full, half and quarter
resolution. ImageNet-style (section 3.4, Table 1), `build_imagenet_resnet`: a 7x7 stride-2
stem and a 3x3 stride-2 max pool, then four stages with 64 to 512 filters (times
`width`), of basic blocks (ResNet-18, 34) or bottleneck blocks (ResNet-50), each stage
after the first halving the resolution, 32x in all, as on 224x224 ImageNet crops.
Both end in global average pooling and a linear classifier; shortcuts that change shape
are 1x1 projections. A model takes raw pixel values (0..255, any integer or float dtype)
and returns logits, so an exported model needs no preprocessing outside its graph.
"""

from __future__ import annotations

import keras
from keras import layers

from krefinery.config import check_depth
from krefinery.core.blocks import Blocks, check_inputs
from krefinery.errors import UserError

STAGE_FILTERS = (16, 32, 64)
MIN_SIZE = 8
# ImageNet-style: blocks per stage (Table 1 of He et al.), and whether they are bottlenecks.
IMAGENET_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}
IMAGENET_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
# Five halvings: smaller images would leave the last stage less than one pixel.
IMAGENET_MIN_SIZE = 32
# What each shape is called where images are too small for it (`blocks.check_inputs`).
CIFAR_NETWORK = "a CIFAR-style ResNet, which halves the resolution twice"
IMAGENET_NETWORK = "an ImageNet-style network, which halves the resolution five times"


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
    """Builds a logits-producing CIFAR-style ResNet-`depth` for `input_shape` images.

    `weight_decay` is the paper's coupled L2 penalty on conv and dense kernels;
    `precision` a Keras dtype policy name (`mixed_bfloat16`: bfloat16 compute, float32
    weights), set per layer rather than globally, so models of different precisions can
    live in one process; the logits are always float32. Batch normalization runs
    TensorFlow's fused kernel on the TensorFlow backend (`core.batchnorm`);
    `synchronized_batch_norm` (TensorFlow, under a tf.distribute strategy) gathers batch
    statistics across replicas instead, as one device computes them over the whole batch.
    """
    blocks = check_depth(depth)
    check_inputs(input_shape, num_classes, MIN_SIZE, CIFAR_NETWORK)
    _check_version(version)
    make = Blocks(precision, weight_decay, synchronized_batch_norm)
    block = _basic_v1 if version == 1 else _basic_v2
    inputs = keras.Input(shape=input_shape, name="image")
    x = make.conv(STAGE_FILTERS[0] * width, 3)(make.rescale(inputs))
    if version == 1:
        x = make.bn_relu(x)
    for stage, filters in enumerate(STAGE_FILTERS):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block(make, x, filters * width, stride)
    if version == 2:
        x = make.bn_relu(x)
    return keras.Model(inputs, make.logits(x, num_classes), name=name or f"resnet{depth}_v{version}")


def build_imagenet_resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 18,
    width: int = 1,
    version: int = 1,
    weight_decay: float = 1e-4,
    name: str | None = None,
    precision: str = "float32",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Builds a logits-producing ImageNet-style ResNet-18, 34 or 50; the other arguments
    are `build_resnet`'s. Bottleneck blocks stride in their 3x3 convolution, as
    torchvision's ResNet-50 does (its "v1.5"), so the two can be compared step for step.

    Written here rather than taken from `keras.applications`, which has no ResNet-18 or
    34, preprocesses inputs its own way, and takes no per-layer precision, weight decay
    or fused batch normalization.
    """
    if depth not in IMAGENET_STAGES:
        raise UserError(f"an ImageNet-style ResNet has depth 18, 34 or 50, got {depth}.")
    check_inputs(input_shape, num_classes, IMAGENET_MIN_SIZE, IMAGENET_NETWORK)
    _check_version(version)
    counts, bottleneck = IMAGENET_STAGES[depth]
    make = Blocks(precision, weight_decay, synchronized_batch_norm)
    if bottleneck:
        block = _bottleneck_v1 if version == 1 else _bottleneck_v2
    else:
        block = _basic_v1 if version == 1 else _basic_v2
    inputs = keras.Input(shape=input_shape, name="image")
    x = make.conv(IMAGENET_FILTERS[0] * width, 7, stride=2)(make.rescale(inputs))
    if version == 1:
        x = make.bn_relu(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", dtype=make.policy)(x)
    for stage, (filters, count) in enumerate(zip(IMAGENET_FILTERS, counts)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block(make, x, filters * width, stride)
    if version == 2:
        x = make.bn_relu(x)
    return keras.Model(inputs, make.logits(x, num_classes), name=name or f"imagenet_resnet{depth}_v{version}")


def _check_version(version: int) -> None:
    if version not in (1, 2):
        raise UserError(f"ResNet version must be 1 or 2, got {version}.")


def _basic_v1(make: Blocks, x, filters: int, stride: int):
    y = make.bn_relu(make.conv(filters, 3, stride)(x))
    return _join_v1(make, x, make.bn()(make.conv(filters, 3)(y)), stride)


def _basic_v2(make: Blocks, x, filters: int, stride: int):
    activated = make.bn_relu(x)
    shortcut = _shortcut_v2(make, x, activated, filters, stride)
    y = make.conv(filters, 3, stride)(activated)
    return make.add([make.conv(filters, 3)(make.bn_relu(y)), shortcut])


def _bottleneck_v1(make: Blocks, x, filters: int, stride: int):
    y = make.bn_relu(make.conv(filters, 1)(x))
    y = make.bn_relu(make.conv(filters, 3, stride)(y))
    return _join_v1(make, x, make.bn()(make.conv(filters * BOTTLENECK_EXPANSION, 1)(y)), stride)


def _bottleneck_v2(make: Blocks, x, filters: int, stride: int):
    activated = make.bn_relu(x)
    shortcut = _shortcut_v2(make, x, activated, filters * BOTTLENECK_EXPANSION, stride)
    y = make.conv(filters, 1)(activated)
    y = make.conv(filters, 3, stride)(make.bn_relu(y))
    return make.add([make.conv(filters * BOTTLENECK_EXPANSION, 1)(make.bn_relu(y)), shortcut])


def _join_v1(make: Blocks, x, y, stride: int):
    """A post-activation block's end: `y` plus the input, projected where the shape
    changes, then ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != y.shape[-1]:
        shortcut = make.bn()(make.conv(y.shape[-1], 1, stride)(x))
    return make.relu()(make.add([y, shortcut]))


def _shortcut_v2(make: Blocks, x, activated, filters: int, stride: int):
    """A pre-activation block's shortcut: the input, or a projection of its activation
    where the shape changes."""
    if stride != 1 or x.shape[-1] != filters:
        return make.conv(filters, 1, stride)(activated)
    return x
