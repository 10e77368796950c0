"""The fast convolutions (blocked im2col and Winograd F(2x2, 3x3) on blocks of channels-last images, on
all cores) against the whole-batch im2col reference, gradient checks, the layout they hand on
(channels-last) and the params switch that selects the reference."""

import numpy as np
import pytest
from gradcheck import check_layer

import mnist_classification.nn.blocked as blocked
import mnist_classification.nn.conv as conv
import mnist_classification.nn.parallel as parallel
import mnist_classification.nn.winograd as winograd
from mnist_classification.infra.params import validate
from mnist_classification.nn.activations import ReLU
from mnist_classification.nn.batchnorm import BatchNorm2D
from mnist_classification.nn.conv import Conv2D, MaxPool2D
from mnist_classification.nn.layout import is_channels_last
from mnist_classification.nn.network import build_network, layer_from_config

SHAPES = [  # (N, C, F, H, W): even and odd sizes, one input channel, the default CNN's layers (small N)
    (2, 3, 4, 6, 6), (3, 2, 3, 5, 7), (2, 1, 5, 4, 4), (1, 2, 2, 1, 1), (4, 32, 32, 28, 28), (4, 64, 64, 14, 14),
]


@pytest.fixture(params=["winograd", "blocked", "winograd-few-channels"])
def path(request, monkeypatch):
    """Run a test through the Winograd transforms (for any channel count), through blocked im2col, and
    through the winograd method's im2col blocks for few input channels."""
    monkeypatch.setattr(conv, "DIRECT_BELOW", 1000 if request.param == "winograd-few-channels" else 0)
    return request.param


def _pair(c, f, seed=0, method="winograd"):
    """An im2col and a fast layer with the same weights and a non-zero bias."""
    reference = Conv2D(c, f, 3, rng=np.random.default_rng(seed))
    reference.params["b"][:] = np.random.default_rng(seed + 1).standard_normal(f)
    fast = Conv2D(c, f, 3, method="blocked" if method == "blocked" else "winograd")
    for name in reference.params:
        fast.params[name][...] = reference.params[name]
    return reference, fast


def _run(layer, x, g):
    y = layer.forward(x, training=True)
    dx = layer.backward(g)
    return np.array(y), None if dx is None else np.array(dx), {k: v.copy() for k, v in layer.grads.items()}


def _assert_float32_close(actual, expected):
    """Agreement to float32 rounding, relative to the array's scale."""
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6 * max(scale, 1e-6))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("block", ["one-block", "many-blocks"])
def test_fast_methods_match_im2col_forward_and_backward(shape, block, monkeypatch, path):
    if block == "many-blocks":  # one image per block of images, several blocks of tile rows per image
        monkeypatch.setattr(blocked, "COLUMN_BUDGET", 1)
        monkeypatch.setattr(winograd, "BLOCK_ELEMENTS", 64)
    n, c, f, h, w = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((n, f, h, w)).astype(np.float32)
    reference, fast = _pair(c, f, method=path)
    (y1, dx1, grads1), (y2, dx2, grads2) = _run(reference, x, g), _run(fast, x, g)
    assert y2.dtype == dx2.dtype == np.float32
    _assert_float32_close(y2, y1)
    _assert_float32_close(dx2, dx1)
    for name in grads1:
        _assert_float32_close(grads2[name], grads1[name])
    _assert_float32_close(fast.forward(x, training=False), y1)


@pytest.mark.parametrize("shape", [(2, 2, 3, 4, 4), (2, 3, 2, 3, 5), (1, 1, 2, 2, 3)], ids=str)
def test_fast_method_gradients(shape, monkeypatch, path):
    monkeypatch.setattr(winograd, "BLOCK_ELEMENTS", 32)  # several blocks of tile rows
    n, c, f, h, w = shape
    layer = _pair(c, f, seed=4, method=path)[1]
    check_layer(layer, np.random.default_rng(5).standard_normal((n, c, h, w)))


def test_first_layer_skips_input_gradient_and_needs_a_training_forward(path):
    reference, fast = _pair(1, 4, method=path)
    x = np.random.default_rng(6).standard_normal((3, 1, 6, 6)).astype(np.float32)
    g = np.ones((3, 4, 6, 6), dtype=np.float32)
    for layer in (reference, fast):
        layer.needs_input_grad = False
    (_, dx1, grads1), (_, dx2, grads2) = _run(reference, x, g), _run(fast, x, g)
    assert dx1 is None and dx2 is None
    _assert_float32_close(grads2["W"], grads1["W"])
    fast.forward(x, training=False)
    with pytest.raises(RuntimeError, match="preceding forward"):
        fast.backward(g)


def test_outputs_survive_later_batches_and_batch_size_changes(path):
    layer = _pair(2, 3, method=path)[1]
    rng = np.random.default_rng(7)
    x1, x2 = rng.standard_normal((2, 4, 2, 6, 6)).astype(np.float32)
    y1 = layer.forward(x1, training=True)
    dx1 = layer.backward(np.ones_like(y1))
    kept = y1.copy(), dx1.copy()
    layer.forward(x2[:3], training=True)
    layer.backward(np.full((3, 3, 6, 6), 2.0, dtype=np.float32))
    np.testing.assert_array_equal(y1, kept[0])
    np.testing.assert_array_equal(dx1, kept[1])
    np.testing.assert_allclose(layer.forward(x1, training=True), y1, rtol=1e-6)


@pytest.mark.parametrize("c", [3, 4], ids=["unfolded", "folded"])  # batch norm folds 256 pixels x 4 channels per row
@pytest.mark.parametrize("size", [6, 7])  # 7 x 7: pooling drops a row and a column
def test_fast_methods_hand_on_channels_last_memory_and_neighbours_accept_it(path, c, size, monkeypatch):
    # Batch norm, ReLU and pooling give the same values and gradients on channels-last memory as on
    # plain (N, C, H, W) arrays (whose gradients test_conv.py checks numerically), and keep the
    # layout; small blocks put several blocks on the threads.
    monkeypatch.setattr(parallel, "ELEMENTWISE_BLOCK", 16)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, c, size, size)).astype(np.float32)
    y = _pair(c, c, method=path)[1].forward(x, training=True)
    assert is_channels_last(y) and not y.flags.c_contiguous
    for make in (lambda: BatchNorm2D(c), lambda: MaxPool2D(2), ReLU):
        results = []
        for inp in (np.ascontiguousarray(y), y):
            layer = make()
            out = layer.forward(inp, training=True)
            g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
            results.append((out.copy(), layer.backward(g).copy(), {k: v.copy() for k, v in layer.grads.items()},
                            layer.forward(inp, training=False).copy()))
            if inp is y:
                assert is_channels_last(out)  # the layout goes on to the next convolution
        (o1, d1, g1, e1), (o2, d2, g2, e2) = results
        np.testing.assert_allclose(o2, o1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e2, e1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d2, d1, rtol=1e-5, atol=1e-6)
        for name in g1:
            np.testing.assert_allclose(g2[name], g1[name], rtol=1e-5, atol=1e-5)


def test_winograd_needs_3x3_kernels_and_names_the_methods():
    with pytest.raises(ValueError, match="kernel_size 3"):
        Conv2D(2, 2, 5, method="winograd")
    with pytest.raises(ValueError, match="im2col, blocked, winograd"):
        Conv2D(2, 2, 3, method="fft")


def _methods(cnn: dict) -> list[str]:
    p = validate({"train": {"model": "cnn", "hidden": [16], "cnn": cnn}})["train"]
    network = build_network(p, (8, 8), [str(i) for i in range(10)], 0.0, 1.0)
    return [layer.method for layer in network.layers if layer.kind == "conv2d"]


def test_params_switch_selects_the_method():
    assert _methods({}) == ["blocked"] * 4  # default auto: blocked im2col, the fastest measured
    assert _methods({"conv": "auto", "kernel_size": 5}) == ["blocked"] * 4
    for method in conv.METHODS:
        assert _methods({"conv": method, "kernel_size": 3}) == [method] * 4


def test_method_is_saved_and_older_configs_load_as_im2col():
    layer = Conv2D(2, 3, 3, method="winograd")
    arrays = {name: array.copy() for name, array in layer.params.items()}
    assert layer_from_config(layer.config(), arrays).method == "winograd"
    old = {key: value for key, value in layer.config().items() if key != "method"}
    assert layer_from_config(old, arrays).method == "im2col"
