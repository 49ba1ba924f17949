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


def _batch_norm_pair(policy: str):
    """Keras's BatchNormalization and the project's, built with the same random weights."""
    import keras

    from krefinery.core.batchnorm import BatchNormalization

    rng = np.random.default_rng(0)
    layers = [cls(momentum=0.9, epsilon=1e-5, dtype=policy) for cls in (keras.layers.BatchNormalization, BatchNormalization)]
    weights = [rng.uniform(0.5, 1.5, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2.0, 5)]
    for layer in layers:
        layer.build((8, 6, 6, 5))
        layer.set_weights([w.astype("float32") for w in weights])
    return layers


# float32: the same arithmetic in another order. bfloat16: the fused kernel reads bf16
# activations as Keras's upcast does, so outputs agree to bf16 rounding of the sums.
@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-2)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_computes_what_keras_does(policy, tolerance, training):
    """Outputs, gradients and moving statistics of TensorFlow's fused kernel equal Keras's
    layer's (its moving-average rule over the biased batch variance), in both precisions."""
    import tensorflow as tf

    keras_layer, fused = _batch_norm_pair(policy)
    initial = fused.get_weights()
    rng = np.random.default_rng(1)
    images = tf.constant((rng.normal(size=(8, 6, 6, 5)) * 3 + 1).astype("float32"))
    # A loss that weighs every output differently, so no gradient is a sum that cancels.
    weighting = tf.constant(rng.normal(size=(8, 6, 6, 5)).astype("float32"))
    results = []
    for layer in (keras_layer, fused):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images, training=training)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * weighting)
        gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
        results.append((outputs, gradients, layer.get_weights()))
    (keras_out, keras_grads, keras_weights), (fused_out, fused_grads, fused_weights) = results
    assert fused_out.dtype == keras_out.dtype == ("bfloat16" if policy == "mixed_bfloat16" else "float32")
    np.testing.assert_allclose(tf.cast(fused_out, "float32"), tf.cast(keras_out, "float32"), atol=tolerance)
    for fused_grad, keras_grad in zip(fused_grads, keras_grads):
        np.testing.assert_allclose(fused_grad, keras_grad, rtol=tolerance, atol=tolerance)
    for fused_w, keras_w in zip(fused_weights, keras_weights):  # gamma, beta, moving mean and variance
        np.testing.assert_allclose(fused_w, keras_w, rtol=1e-6, atol=1e-6)
    if training:  # The moving statistics moved (by the batch's), the same way.
        assert not np.allclose(fused_weights[2], initial[2]) and not np.allclose(fused_weights[3], initial[3])


def test_a_resnet_with_fused_batch_norm_reads_keras_weights_and_back(tmp_path):
    """Same variables, same names: a weights file of either layer loads into the other."""
    import keras

    from krefinery.core import blocks

    fused = build_resnet((8, 8, 1), 10, depth=8)
    original = blocks.BatchNormalization
    blocks.BatchNormalization = keras.layers.BatchNormalization
    try:
        plain = build_resnet((8, 8, 1), 10, depth=8)
    finally:
        blocks.BatchNormalization = original
    assert [type(layer).__name__ for layer in fused.layers] == [type(layer).__name__ for layer in plain.layers]
    assert any(type(layer) is keras.layers.BatchNormalization for layer in plain.layers)
    fused.save_weights(tmp_path / "fused.weights.h5")
    plain.load_weights(tmp_path / "fused.weights.h5")
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(fused(images, training=False), plain(images, training=False), atol=1e-4)
