"""Gradient checks and behaviour of the dense layer, activations, dropout and reshapes."""

import numpy as np
import pytest
from gradcheck import check_layer

from mnist_classification.nn.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from mnist_classification.nn.layers import AddChannel, Dense, Dropout, Flatten


def _input(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    # Keep values away from the kinks of ReLU-like units, where the derivative is undefined.
    x[np.abs(x) < 1e-3] = 0.1
    return x


@pytest.mark.parametrize("init", ["he", "xavier"])
def test_dense_gradients(init):
    check_layer(Dense(5, 4, init=init, rng=np.random.default_rng(1)), _input((3, 5)))


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.1), Tanh(), Sigmoid(), Flatten()], ids=lambda l: l.kind)
def test_activation_gradients(layer):
    check_layer(layer, _input((4, 3, 2)))


def test_add_channel_gradients():
    check_layer(AddChannel(), _input((2, 3, 3)))


def test_dropout_gradients_with_fixed_mask():
    layer = Dropout(0.4)
    check_layer(layer, _input((6, 5)), before_forward=lambda: setattr(layer, "rng", np.random.default_rng(7)))


def test_dropout_is_identity_at_inference_and_keeps_expectation_in_training():
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones((200, 500), dtype=np.float32)
    assert layer.forward(x, training=False) is x
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    assert set(np.unique(y)) == {0.0, 2.0}
    assert abs(y.mean() - 1.0) < 0.01


def test_dense_skips_input_gradient_for_first_layer():
    layer = Dense(3, 2, rng=np.random.default_rng(0))
    layer.needs_input_grad = False
    layer.forward(np.ones((4, 3), dtype=np.float32), training=True)
    assert layer.backward(np.ones((4, 2), dtype=np.float32)) is None
    np.testing.assert_allclose(layer.grads["b"], [4, 4])


def test_layers_keep_float32():
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    for layer in [Dense(6, 3), ReLU(), LeakyReLU(), Tanh(), Sigmoid(), Dropout(0.3)]:
        y = layer.forward(x, training=True)
        assert y.dtype == np.float32, layer.kind
        assert layer.backward(np.ones_like(y)).dtype == np.float32, layer.kind


def test_sigmoid_saturates_without_overflow():
    with np.errstate(all="raise"):
        y = Sigmoid().forward(np.array([[-1e4, 0.0, 1e4]], dtype=np.float32))
    np.testing.assert_allclose(y, [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("init,fan_in,fan_out,expected_std", [
    ("he", 400, 100, np.sqrt(2 / 400)),
    ("xavier", 400, 100, np.sqrt(2 / 500)),  # uniform(-a, a) has std a / sqrt(3)
])
def test_initialisation_scale(init, fan_in, fan_out, expected_std):
    w = Dense(fan_in, fan_out, init=init, rng=np.random.default_rng(0)).params["W"]
    assert w.dtype == np.float32
    assert abs(w.std() / expected_std - 1) < 0.02
