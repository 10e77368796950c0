"""Gradient checks and behaviour of the convolution, max-pooling and batch-norm layers."""

import json

import numpy as np
import pytest
from gradcheck import check_layer, to_float64

from mnist_classification.nn.activations import ReLU
from mnist_classification.nn.batchnorm import BatchNorm2D
from mnist_classification.nn.conv import (
    CONV_LAYERS,
    Conv2D,
    MaxPool2D,
    conv_feature_layers,
)
from mnist_classification.nn.layers import AddChannel
from mnist_classification.nn.layout import is_channels_last
from mnist_classification.nn.network import LAYER_TYPES, layer_from_config


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _naive_conv(x, weight, bias):
    """Direct 'same' convolution (cross-correlation) with loops: x (N, C, H, W), weight (F, C, k, k)."""
    n, c, h, w = x.shape
    f, _, k, _ = weight.shape
    p = k // 2
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p))
    padded[:, :, p:p + h, p:p + w] = x
    out = np.zeros((n, f, h, w))
    for s in range(n):
        for o in range(f):
            for r in range(h):
                for q in range(w):
                    out[s, o, r, q] = np.sum(padded[s, :, r:r + k, q:q + k] * weight[o]) + bias[o]
    return out


# -- Conv2D ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["col2im", "transposed"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_conv_gradients(kernel_size, method):
    layer = Conv2D(2, 3, kernel_size, rng=np.random.default_rng(1))
    layer.input_grad_method = method
    layer.params["b"][:] = [0.1, -0.2, 0.3]
    check_layer(layer, _input((2, 2, 5, 5)))


@pytest.mark.parametrize("method", ["col2im", "transposed"])
def test_conv_gradients_non_square_and_kernel_wider_than_image(method):
    layer = Conv2D(2, 2, 5, rng=np.random.default_rng(2))
    layer.input_grad_method = method
    check_layer(layer, _input((2, 2, 3, 4), seed=1))


def test_conv_input_gradient_methods_agree_in_float32():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 7, 6)).astype(np.float32)
    g = rng.standard_normal((3, 5, 7, 6)).astype(np.float32)
    results = []
    for method in ("col2im", "transposed"):
        layer = Conv2D(4, 5, 3, rng=np.random.default_rng(0))
        layer.input_grad_method = method
        layer.forward(x, training=True)
        results.append((layer.backward(g), layer.grads["W"].copy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1])


@pytest.mark.parametrize("kernel_size,shape", [(3, (2, 2, 5, 6)), (5, (1, 3, 4, 4)), (1, (2, 2, 3, 3))])
def test_conv_forward_matches_naive_convolution(kernel_size, shape):
    rng = np.random.default_rng(3)
    c = shape[1]
    layer = Conv2D(c, 4, kernel_size, rng=rng)
    layer.params["b"][:] = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = _naive_conv(x.astype(np.float64), layer.params["W"].reshape(4, c, kernel_size, kernel_size)
                           .astype(np.float64), layer.params["b"].astype(np.float64))
    for training in (True, False):
        y = layer.forward(x, training=training)
        assert y.dtype == np.float32 and y.shape == (shape[0], 4, *shape[2:])
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv_inference_in_chunks_matches_training_forward(monkeypatch):
    import mnist_classification.nn.conv as conv

    layer = Conv2D(2, 3, 3, rng=np.random.default_rng(4))
    x = _input((7, 2, 6, 6)).astype(np.float32)
    whole = layer.forward(x, training=True)
    monkeypatch.setattr(conv, "INFERENCE_COLUMN_BUDGET", 2 * 9 * 36 * 3)  # chunks of 3 samples
    np.testing.assert_allclose(layer.forward(x, training=False), whole, rtol=1e-6, atol=1e-6)


def test_conv_outputs_and_gradients_are_not_overwritten_by_later_batches():
    layer = Conv2D(2, 3, 3, rng=np.random.default_rng(5))
    x1, x2 = _input((4, 2, 6, 6), 1).astype(np.float32), _input((4, 2, 6, 6), 2).astype(np.float32)
    y1 = layer.forward(x1, training=True)
    g1 = layer.backward(np.ones_like(y1))
    y1_copy, g1_copy = y1.copy(), g1.copy()
    layer.forward(x2, training=True)
    layer.backward(np.full_like(y1, 2.0))
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(g1, g1_copy)


def test_conv_batch_size_changes_reuse_buffers_correctly():
    layer = Conv2D(1, 2, 3, rng=np.random.default_rng(6))
    x = _input((5, 1, 4, 4)).astype(np.float32)
    full = layer.forward(x, training=True)
    np.testing.assert_allclose(layer.forward(x[:2], training=True), full[:2], rtol=1e-6)
    np.testing.assert_allclose(layer.forward(x, training=True), full, rtol=1e-6)


def test_conv_backward_requires_training_forward_and_skips_unneeded_input_grad():
    layer = Conv2D(1, 2, 3, rng=np.random.default_rng(0))
    x = np.ones((2, 1, 4, 4), dtype=np.float32)
    layer.forward(x, training=False)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((2, 2, 4, 4), dtype=np.float32))
    layer.needs_input_grad = False
    layer.forward(x, training=True)
    assert layer.backward(np.ones((2, 2, 4, 4), dtype=np.float32)) is None
    np.testing.assert_allclose(layer.grads["b"], [32, 32])


def test_conv_rejects_even_kernels_and_wrong_channels():
    with pytest.raises(ValueError):
        Conv2D(1, 2, 4)
    with pytest.raises(ValueError):
        Conv2D(3, 2, 3).forward(np.zeros((1, 2, 4, 4), dtype=np.float32))


def test_conv_initialisation_scale():
    w = Conv2D(32, 64, 3, init="he", rng=np.random.default_rng(0)).params["W"]
    assert w.shape == (64, 32 * 9) and w.dtype == np.float32
    assert abs(w.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.02


# -- MaxPool2D ------------------------------------------------------------------------------------

def test_maxpool_gradients():
    x = np.random.default_rng(0).permutation(2 * 2 * 4 * 6).reshape(2, 2, 4, 6) / 10.0  # no ties
    check_layer(MaxPool2D(2), x)


def test_maxpool_odd_size_floors_and_drops_remainder():
    x = np.random.default_rng(1).permutation(1 * 1 * 5 * 5).reshape(1, 1, 5, 5).astype(np.float32)
    layer = MaxPool2D(2)
    y = layer.forward(x, training=True)
    assert y.shape == (1, 1, 2, 2) and layer.output_shape((1, 5, 5)) == (1, 2, 2)
    np.testing.assert_array_equal(y, x[:, :, :4, :4].reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5)))
    check_layer(MaxPool2D(2), x / 10.0)


@pytest.mark.parametrize("size", [3, 4])
def test_maxpool_larger_windows_values_and_gradients(size):
    x = np.random.default_rng(2).permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9).astype(np.float32)
    layer = MaxPool2D(size)
    y = layer.forward(x, training=True)
    ho, wo = 7 // size, 9 // size
    crop = x[:, :, :ho * size, :wo * size].reshape(2, 3, ho, size, wo, size)
    np.testing.assert_array_equal(y, crop.max(axis=(3, 5)))
    check_layer(MaxPool2D(size), x / 10.0)


@pytest.mark.parametrize("make", [lambda: Conv2D(2, 3, 3), lambda: MaxPool2D(2)], ids=["conv2d", "maxpool2d"])
def test_backward_needs_a_training_forward(make):
    """After an inference forward there is nothing to differentiate: a clear error, not a stale gradient."""
    layer = make()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    grad = np.ones_like(layer.forward(x, training=True))
    assert layer.backward(grad).shape == x.shape
    layer.forward(x, training=False)
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(grad)
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        make().backward(np.ones((2, 3, 4, 4), np.float32))


@pytest.mark.parametrize("size", [2, 3])
def test_maxpool_ties_route_gradient_to_one_winner(size):
    layer = MaxPool2D(size)
    x = np.ones((1, 1, size, size), dtype=np.float32)
    y = layer.forward(x, training=True)
    dx = layer.backward(np.full_like(y, 3.0))
    assert dx.sum() == 3.0 and np.count_nonzero(dx) == 1
    assert dx.dtype == np.float32


@pytest.mark.parametrize("size", [1, 2, 3])
def test_maxpool_channels_last_blocks_equal_plain_pooling(monkeypatch, size):
    # Channels-last inputs are pooled by blocks of images on the threads: same values, same winners on
    # ties (few distinct values), same gradients, bit for bit, as plain (N, C, H, W) pooling; 7 x 8
    # images drop a row (and for 3 x 3 windows a column too).
    monkeypatch.setattr("mnist_classification.nn.conv.POOL_BLOCK_BYTES", 1)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (5, 3, 7, 8)).astype(np.float32)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    grad = rng.standard_normal((5, 3, 7 // size, 8 // size)).astype(np.float32)
    plain, blocked = MaxPool2D(size), MaxPool2D(size)
    y = plain.forward(x, training=True)
    y_last = blocked.forward(x_last, training=True)
    assert is_channels_last(y_last)
    np.testing.assert_array_equal(y_last, y)
    np.testing.assert_array_equal(blocked.backward(grad), plain.backward(grad))


# -- BatchNorm2D ----------------------------------------------------------------------------------

def _batchnorm(channels=3, seed=0):
    layer = BatchNorm2D(channels)
    rng = np.random.default_rng(seed)
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, channels)
    layer.params["beta"][:] = rng.standard_normal(channels)
    return layer


def test_batchnorm_training_gradients():
    check_layer(_batchnorm(), _input((4, 3, 3, 2)) * 2 + 1, training=True)


def test_batchnorm_inference_gradients():
    layer = _batchnorm()
    layer.buffers["running_mean"][:] = [0.5, -1.0, 0.2]
    layer.buffers["running_var"][:] = [2.0, 0.5, 1.5]
    check_layer(layer, _input((2, 3, 3, 3)), training=False)


def test_batchnorm_normalises_in_training_and_updates_running_stats():
    layer = BatchNorm2D(2, momentum=0.9)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 2, 5, 5)) * [[[[3.0]], [[0.5]]]] + [[[[2.0]], [[-1.0]]]]).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, atol=1e-3)
    m = x.shape[0] * 25
    batch_mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * batch_var, rtol=1e-5)
    for _ in range(200):
        layer.forward(x, training=True)
    np.testing.assert_allclose(layer.buffers["running_mean"], batch_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], batch_var, rtol=1e-4)


def test_batchnorm_inference_uses_running_stats():
    layer = _batchnorm(2, seed=1)
    layer.buffers["running_mean"][:] = [1.0, -2.0]
    layer.buffers["running_var"][:] = [4.0, 0.25]
    before = {k: v.copy() for k, v in layer.buffers.items()}
    x = _input((3, 2, 2, 2)).astype(np.float32)
    y = layer.forward(x, training=False)
    std = np.sqrt(np.array([4.0, 0.25]) + layer.eps)[None, :, None, None]
    expected = (x - np.array([1.0, -2.0])[None, :, None, None]) / std \
        * layer.params["gamma"][None, :, None, None] + layer.params["beta"][None, :, None, None]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    for name in before:  # inference leaves the running statistics alone
        np.testing.assert_array_equal(layer.buffers[name], before[name])


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_fused_relu_gradients(training):
    layer = _batchnorm()
    layer.activation = "relu"
    layer.buffers["running_mean"][:] = [0.5, -1.0, 0.2]
    layer.buffers["running_var"][:] = [2.0, 0.5, 1.5]
    x = _input((4, 3, 3, 2)) * 2 + 1
    check_layer(layer, x, training=training)
    out = layer.forward(x, training=training)
    assert (out == 0).mean() > 0.2  # the ReLU's kink was crossed: the check covered both sides


@pytest.mark.parametrize("channels_last", [False, True], ids=["plain", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_fused_relu_equals_batchnorm_then_relu(monkeypatch, channels_last, training):
    # Bit for bit, forward and backward, over several blocks of every layout.
    monkeypatch.setattr("mnist_classification.nn.batchnorm.BLOCK_BYTES", 512)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5, 7, 7)).astype(np.float32) * 2 + 0.5
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    fused, plain, relu = _batchnorm(5, seed=2), _batchnorm(5, seed=2), ReLU()
    fused.activation = "relu"
    y_fused = fused.forward(x, training=training)
    y_plain = relu.forward(plain.forward(x, training=training), training=training)
    np.testing.assert_array_equal(y_fused, y_plain)
    np.testing.assert_array_equal(fused.backward(grad), plain.backward(relu.backward(grad)))
    for name in ("gamma", "beta"):
        np.testing.assert_array_equal(fused.grads[name], plain.grads[name])
    for name in fused.buffers:
        np.testing.assert_array_equal(fused.buffers[name], plain.buffers[name])


def test_batchnorm_activation_is_checked_and_saved():
    with pytest.raises(ValueError, match="activation must be one of identity, relu, not 'tanh'"):
        BatchNorm2D(3, activation="tanh")
    assert "activation" not in BatchNorm2D(3).config()  # files written before fusion load unchanged
    layer = BatchNorm2D(3, activation="relu")
    rebuilt = layer_from_config(json.loads(json.dumps(layer.config())), {**layer.params, **layer.buffers})
    assert rebuilt.activation == "relu"


def test_batchnorm_params_not_decayed_and_buffers_saved():
    layer = BatchNorm2D(4)
    assert layer.decayed == ()
    assert set(layer.params) == {"gamma", "beta"}
    assert set(layer.buffers) == {"running_mean", "running_var"}


# -- shared ---------------------------------------------------------------------------------------

def test_output_shapes():
    assert Conv2D(1, 8, 3).output_shape((1, 28, 28)) == (8, 28, 28)
    assert MaxPool2D(2).output_shape((8, 28, 28)) == (8, 14, 14)
    assert BatchNorm2D(8).output_shape((8, 14, 14)) == (8, 14, 14)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_conv_feature_layers_shape(batch_norm):
    layers = conv_feature_layers([32, 64], 3, batch_norm, "relu", "he", np.random.default_rng(0))
    kinds = [layer.kind for layer in layers]
    block = ["conv2d", "batchnorm2d"] * 2 if batch_norm else ["conv2d", "relu"] * 2
    assert kinds == (block + ["maxpool2d"]) * 2
    assert all(layer.activation == "relu" for layer in layers if layer.kind == "batchnorm2d")
    shape = (1, 28, 28)
    for layer in layers:
        shape = layer.output_shape(shape)
    assert shape == (64, 7, 7)
    x = np.random.default_rng(0).standard_normal((2, 28, 28)).astype(np.float32)
    y = AddChannel().forward(x)
    for layer in layers:
        y = layer.forward(y, training=True)
    assert y.shape == (2, 64, 7, 7) and y.dtype == np.float32
    grad = np.ones_like(y)
    for layer in reversed(layers):
        grad = layer.backward(grad)
        assert grad.dtype == np.float32
    assert grad.shape == (2, 1, 28, 28)


def test_conv_layer_types_registered_with_unique_kinds():
    kinds = [cls.kind for cls in CONV_LAYERS]
    assert len(set(kinds)) == len(kinds) == 3
    for cls in CONV_LAYERS:
        assert LAYER_TYPES[cls.kind] is cls


@pytest.mark.parametrize("layer", [Conv2D(3, 5, 5, init="xavier"), MaxPool2D(3), BatchNorm2D(6, 0.8, 1e-3)],
                         ids=lambda layer: layer.kind)
def test_config_round_trip(layer):
    config = json.loads(json.dumps(layer.config()))
    rebuilt = layer_from_config(config, {**layer.params, **layer.buffers})
    assert type(rebuilt) is type(layer) and rebuilt.config() == layer.config()
    for store in ("params", "buffers"):  # the very arrays given, not fresh ones
        original, copy = getattr(layer, store), getattr(rebuilt, store)
        assert original.keys() == copy.keys() and all(copy[k] is original[k] for k in original)


@pytest.mark.parametrize("layer", [Conv2D(2, 3, 3), MaxPool2D(2), BatchNorm2D(2), ReLU()], ids=lambda l: l.kind)
def test_layers_keep_float32(layer):
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    for training in (True, False):
        y = layer.forward(x, training=training)
        assert y.dtype == np.float32, (layer.kind, training)
    y = layer.forward(x, training=True)
    assert layer.backward(np.ones_like(y)).dtype == np.float32


def test_float64_layers_stay_float64():
    layer = Conv2D(2, 3, 3)
    to_float64(layer)
    y = layer.forward(np.ones((1, 2, 4, 4)), training=True)
    assert y.dtype == np.float64 and layer.backward(np.ones_like(y)).dtype == np.float64


@pytest.mark.parametrize("make", [lambda: Conv2D(3, 4, 3), lambda: MaxPool2D(2), lambda: BatchNorm2D(3)],
                         ids=["conv2d", "maxpool2d", "batchnorm2d"])
def test_layers_agree_on_contiguous_and_channel_major_inputs(make):
    # Conv layers hand each other channel-major memory viewed as (N, C, H, W); plain (N, C, H, W)
    # arrays must give the same results, forward and backward.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    x_major = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    results = []
    for inp in (x, x_major):
        layer = make()
        y = layer.forward(inp, training=True)
        g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        results.append((y.copy(), layer.backward(g).copy(), {k: v.copy() for k, v in layer.grads.items()}))
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-6)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-5, atol=1e-5)
