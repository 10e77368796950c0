"""Batch normalisation for convolutional feature maps (Ioffe & Szegedy 2015).

:class:`BatchNorm2D` normalises each channel of an (N, C, H, W) batch over its
N * H * W values, then scales by ``gamma`` and shifts by ``beta`` (trainable,
not weight-decayed). In training it uses the batch statistics and updates the
running statistics ``running = momentum * running + (1 - momentum) * batch``
(the running variance takes the unbiased batch variance); at inference it
uses the running statistics, which are saved in the model file as buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mnist_classification.nn.layers import FLOAT, Layer


def channel_major(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> its (C, N, H, W) transpose, C-contiguous: a view when possible, else a copy.

    The convolution layers return (N, C, H, W) arrays that are transposed views of
    channel-major memory (their matrix products produce that layout), and
    elementwise layers keep the layout, so this is normally free.
    """
    xt = x.transpose(1, 0, 2, 3)
    return xt if xt.flags.c_contiguous else np.ascontiguousarray(xt)


def from_channel_major(a: np.ndarray) -> np.ndarray:
    """(C, N, H, W) -> the (N, C, H, W) view of the same memory."""
    return a.transpose(1, 0, 2, 3)


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of (N, C, H, W) feature maps."""

    kind = "batchnorm2d"
    buffer_names = ("running_mean", "running_var")

    def __init__(self, channels: int, momentum: float = 0.9, eps: float = 1e-5,
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = int(channels), float(momentum), float(eps)
        if self.channels < 1:
            raise ValueError(f"channels must be positive, not {channels}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        if not 0 < self.eps < math.inf:
            raise ValueError(f"eps must be positive and finite, not {eps}")
        if arrays is None:
            arrays = {"gamma": np.ones(self.channels, dtype=FLOAT), "beta": np.zeros(self.channels, dtype=FLOAT),
                      "running_mean": np.zeros(self.channels, dtype=FLOAT),
                      "running_var": np.ones(self.channels, dtype=FLOAT)}
        self.adopt(arrays)

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm2D expects (N, {self.channels}, H, W), got {x.shape}")
        gamma, beta = self.params["gamma"][:, None], self.params["beta"][:, None]
        dtype = np.result_type(x.dtype, gamma.dtype)
        xt = channel_major(x)  # (C, N, H, W)
        x2 = xt.reshape(self.channels, -1)  # (C, M): one contiguous row per channel
        count = x2.shape[1]
        if training:
            mean = (x2.sum(axis=1) / count).astype(dtype, copy=False)
            xhat = np.subtract(x2, mean[:, None], dtype=dtype)
            out = np.square(xhat)
            var = (out.sum(axis=1) / count).astype(dtype, copy=False)
            inv_std = 1 / np.sqrt(var + dtype.type(self.eps))
            xhat *= inv_std[:, None]
            np.multiply(xhat, gamma, out=out)
            out += beta
            keep = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= keep
            running_mean += (1 - keep) * mean
            running_var *= keep
            running_var += (1 - keep) * var * (count / max(count - 1, 1))
            self._cache = (True, xhat, inv_std)
        else:
            inv_std = 1 / np.sqrt(self.buffers["running_var"].astype(dtype) + dtype.type(self.eps))
            scale = gamma[:, 0] * inv_std
            shift = beta[:, 0] - self.buffers["running_mean"] * scale
            out = np.multiply(x2, scale[:, None], dtype=dtype)
            out += shift[:, None]
            self._cache = (False, x2, inv_std)
        return from_channel_major(out.reshape(xt.shape))

    def backward(self, grad_out):
        training, saved, inv_std = self._cache
        g2 = channel_major(grad_out).reshape(self.channels, -1)
        if training:
            xhat = saved
        else:
            xhat = (saved - self.buffers["running_mean"][:, None]) * inv_std[:, None]
        product = g2 * xhat
        dgamma = product.sum(axis=1)
        dbeta = g2.sum(axis=1)
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        if not self.needs_input_grad:
            return None
        scale = self.params["gamma"] * inv_std
        n, c, h, w = grad_out.shape
        if training:
            # dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))
            count = g2.shape[1]
            dx = np.multiply(g2, scale[:, None], dtype=product.dtype)
            np.multiply(xhat, (-scale * dgamma / count)[:, None], out=product)
            dx += product
            dx += (-scale * dbeta / count)[:, None]
        else:
            dx = g2 * scale[:, None]
        return from_channel_major(dx.reshape(c, n, h, w))

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.channels:
            raise ValueError(f"BatchNorm2D expects ({self.channels}, H, W) samples, got {input_shape}")
        return tuple(input_shape)

    def config(self):
        return {"type": self.kind, "channels": self.channels, "momentum": self.momentum, "eps": self.eps}

    def array_shapes(self):
        return {name: (self.channels,) for name in ("gamma", "beta", *self.buffer_names)}
