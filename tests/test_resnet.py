import numpy as np
import pytest

from krefinery.core.resnet import build_resnet
from krefinery.errors import UserError


def trainable_params(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("depth, millions", [(20, 0.27), (56, 0.85), (110, 1.7)])
def test_parameter_counts_match_the_paper(depth, millions, version):
    model = build_resnet((32, 32, 3), 10, depth=depth, version=version)
    assert trainable_params(model) / 1e6 == pytest.approx(millions, rel=0.03)


def test_depth_is_counted_in_weight_layers():
    model = build_resnet((32, 32, 3), 10, depth=20)
    weight_layers = [layer for layer in model.layers if layer.__class__.__name__ in ("Conv2D", "Dense")]
    projections = [layer for layer in weight_layers if getattr(layer, "kernel_size", None) == (1, 1)]
    assert len(weight_layers) - len(projections) == 20


@pytest.mark.parametrize(
    "shape, classes", [((8, 8, 1), 10), ((28, 28, 1), 7), ((32, 32, 3), 100), ((9, 13, 3), 2)]
)
def test_logits_for_any_size_channels_and_classes(shape, classes):
    model = build_resnet(shape, classes, depth=8, version=2)
    images = np.random.default_rng(0).integers(0, 256, (3, *shape)).astype(np.uint8)
    logits = model(images, training=False)
    assert logits.shape == (3, classes)
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(logits))


def test_width_multiplies_filters():
    narrow = trainable_params(build_resnet((32, 32, 3), 10, depth=8))
    wide = trainable_params(build_resnet((32, 32, 3), 10, depth=8, width=2))
    assert 3.5 < wide / narrow < 4.1


def test_weight_decay_is_an_l2_loss_on_kernels():
    model = build_resnet((8, 8, 1), 10, depth=8, weight_decay=2e-4)
    kernels = [v for v in model.trainable_weights if v.name == "kernel"]
    expected = 1e-4 * sum(float(np.sum(np.square(v.numpy()))) for v in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
    assert not build_resnet((8, 8, 1), 10, depth=8, weight_decay=0).losses


@pytest.mark.parametrize("depth", [0, 7, 19, 21])
def test_depth_not_6n_plus_2_is_a_clear_error(depth):
    with pytest.raises(UserError, match="6n\\+2"):
        build_resnet((32, 32, 3), 10, depth=depth)


def test_too_small_images_are_a_clear_error():
    with pytest.raises(UserError, match="at least 8x8"):
        build_resnet((7, 7, 1), 10, depth=8)
