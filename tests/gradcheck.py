"""Numerical gradient checking by central differences, in float64.

A layer's analytic gradients are compared with (f(x + h) - f(x - h)) / 2h of
the scalar ``sum(forward(x) * weights)`` for a fixed random ``weights``. Layers
and params are cast to float64 first so that the check measures the maths,
not float32 rounding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def to_float64(layer) -> None:
    """Cast a layer's params, grads and buffers to float64 in place."""
    for store in (layer.params, layer.grads, layer.buffers):
        for name in store:
            store[name] = store[name].astype(np.float64)


def numerical_gradient(f: Callable[[], float], array: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d array by central differences; ``f`` reads ``array`` (perturbed in place)."""
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def check_layer(layer, x: np.ndarray, training: bool = True, before_forward: Callable[[], None] = lambda: None,
                rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Assert that ``layer.backward`` matches numerical gradients w.r.t. input and every param.

    ``before_forward`` runs before every forward pass (e.g. to reseed a dropout
    generator so that each pass draws the same mask).
    """
    to_float64(layer)
    x = x.astype(np.float64)
    before_forward()
    out = layer.forward(x.copy(), training=training)
    weights = np.random.default_rng(123).standard_normal(out.shape)

    def objective() -> float:
        before_forward()
        return float(np.sum(layer.forward(x.copy(), training=training) * weights))

    before_forward()
    layer.forward(x.copy(), training=training)
    grad_x = layer.backward(weights.copy())
    analytic = {name: g.copy() for name, g in layer.grads.items()}

    np.testing.assert_allclose(grad_x, numerical_gradient(objective, x), rtol=rtol, atol=atol,
                               err_msg=f"{type(layer).__name__}: input gradient")
    for name, param in layer.params.items():
        np.testing.assert_allclose(analytic[name], numerical_gradient(objective, param), rtol=rtol,
                                   atol=atol, err_msg=f"{type(layer).__name__}: gradient of {name}")
