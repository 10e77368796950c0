"""Batch normalisation for convolutional feature maps (Ioffe & Szegedy 2015).

:class:`BatchNorm2D` normalises each channel of an (N, C, H, W) batch over its
N * H * W values, then scales by ``gamma`` and shifts by ``beta`` (trainable,
not weight-decayed). In training it uses the batch statistics and updates the
running statistics ``running = momentum * running + (1 - momentum) * batch``
(the running variance takes the unbiased batch variance); at inference it
uses the running statistics, which are saved in the model file as buffers.
"""

from __future__ import annotations

import numpy as np

from .layers import FLOAT, Layer


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """Sum of an (N, C, H, W) array over N, H and W: (C,). Reduces the contiguous axis first."""
    n, c = a.shape[:2]
    return a.reshape(n, c, -1).sum(axis=2).sum(axis=0)


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of (N, C, H, W) feature maps."""

    kind = "batchnorm2d"

    def __init__(self, channels: int, momentum: float = 0.9, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = int(channels), float(momentum), float(eps)
        if self.channels < 1:
            raise ValueError(f"channels must be positive, not {channels}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, not {eps}")
        self.params = {"gamma": np.ones(self.channels, dtype=FLOAT),
                       "beta": np.zeros(self.channels, dtype=FLOAT)}
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.buffers = {"running_mean": np.zeros(self.channels, dtype=FLOAT),
                        "running_var": np.ones(self.channels, dtype=FLOAT)}

    @staticmethod
    def _per_channel(v: np.ndarray) -> np.ndarray:
        return v[None, :, None, None]

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm2D expects (N, {self.channels}, H, W), got {x.shape}")
        gamma, beta = self.params["gamma"], self.params["beta"]
        dtype = np.result_type(x.dtype, gamma.dtype)
        if training:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            mean = (_channel_sum(x) / count).astype(dtype, copy=False)
            xhat = np.subtract(x, self._per_channel(mean), dtype=dtype)
            squares = np.square(xhat)
            var = (_channel_sum(squares) / count).astype(dtype, copy=False)
            inv_std = 1 / np.sqrt(var + dtype.type(self.eps))
            xhat *= self._per_channel(inv_std)
            np.multiply(xhat, self._per_channel(gamma), out=squares)
            squares += self._per_channel(beta)
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            keep = self.momentum
            running_mean *= keep
            running_mean += (1 - keep) * mean
            running_var *= keep
            running_var += (1 - keep) * var * (count / max(count - 1, 1))
            self._cache = (True, xhat, inv_std)
            return squares
        inv_std = 1 / np.sqrt(self.buffers["running_var"].astype(dtype) + dtype.type(self.eps))
        scale = gamma * inv_std
        shift = beta - self.buffers["running_mean"] * scale
        out = np.multiply(x, self._per_channel(scale), dtype=dtype)
        out += self._per_channel(shift)
        self._cache = (False, x, inv_std)
        return out

    def backward(self, grad_out):
        training, saved, inv_std = self._cache
        gamma = self.params["gamma"]
        if training:
            xhat = saved
        else:
            xhat = (saved - self._per_channel(self.buffers["running_mean"])) * self._per_channel(inv_std)
        product = grad_out * xhat
        dgamma = _channel_sum(product)
        dbeta = _channel_sum(grad_out)
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        if not self.needs_input_grad:
            return None
        scale = gamma * inv_std
        if not training:
            return grad_out * self._per_channel(scale)
        # dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))
        count = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
        dx = np.multiply(grad_out, self._per_channel(scale), dtype=product.dtype)
        np.multiply(xhat, self._per_channel(-scale * dgamma / count), out=product)
        dx += product
        dx += self._per_channel(-scale * dbeta / count)
        return dx

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.channels:
            raise ValueError(f"BatchNorm2D expects ({self.channels}, H, W) samples, got {input_shape}")
        return tuple(input_shape)

    def config(self):
        return {"type": self.kind, "channels": self.channels, "momentum": self.momentum, "eps": self.eps}
