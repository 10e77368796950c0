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
from mnist_classification.nn.layout import (
    channel_major,
    from_channel_major,
    from_spatial_major,
    is_spatial_major,
    spatial_major,
)
from mnist_classification.nn.workspace import Workspace


#: Spatial-major batches are normalised as rows of about this many values (see BatchNorm2D._per_channel).
FOLD_WIDTH = 1024


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of (N, C, H, W) feature maps, in their memory layout
    (channel-major or spatial-major, see :mod:`.layout`; other layouts are copied once)."""

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
        self._work = Workspace()  # the ones vector of _sums
        self._fold = 1

    def _per_channel(self, x: np.ndarray, like_cache: bool = False) -> tuple[np.ndarray, int]:
        """x (N, C, H, W) as a matrix in its own memory layout (no copy) and the axis along which a
        channel's values run: channel-major gives (C, M), one channel per row (axis 1);
        spatial-major gives (M / r, r * C), r pixels' channels per row (axis 0), where r folds
        pixels together so that per-channel broadcasts run over rows of about FOLD_WIDTH values
        rather than C. With ``like_cache``, the layout of the training forward's input."""
        spatial = self._layout[1] == 0 if like_cache else is_spatial_major(x)
        if spatial:
            xs = spatial_major(x)
            self._fold = math.gcd(xs.size // self.channels, max(1, FOLD_WIDTH // self.channels))
            return xs.reshape(-1, self._fold * self.channels), 0
        return channel_major(x).reshape(self.channels, -1), 1

    def _along(self, v: np.ndarray, axis: int) -> np.ndarray:
        """Per-channel values (C,) shaped to broadcast against a matrix from :meth:`_per_channel`."""
        return np.tile(v, self._fold)[None, :] if axis == 0 else v[:, None]

    def _sums(self, a: np.ndarray, axis: int) -> np.ndarray:
        """Per-channel sums (C,) of a matrix from :meth:`_per_channel`, as a product with a vector of
        ones (BLAS: several times faster than ``sum`` over the long axis of a narrow matrix)."""
        if axis == 0:
            return (self._work.ones(len(a), a.dtype) @ a).reshape(self._fold, self.channels).sum(axis=0)
        return a @ self._work.ones(a.shape[1], a.dtype)

    def _restore(self, a: np.ndarray, shape: tuple[int, ...], spatial: bool) -> np.ndarray:
        """The (N, C, H, W) view of a matrix from :meth:`_per_channel`."""
        n, c, h, w = shape
        return from_spatial_major(a.reshape(h, w, n, c)) if spatial else from_channel_major(a.reshape(c, n, h, w))

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm2D expects (N, {self.channels}, H, W), got {x.shape}")
        x2, axis = self._per_channel(x)
        def along(v):
            return self._along(v, axis)
        gamma, beta = self.params["gamma"], self.params["beta"]
        dtype = np.result_type(x.dtype, gamma.dtype)
        count = x2.size // self.channels
        if training:
            mean = (self._sums(x2, axis) / count).astype(dtype, copy=False)
            xhat = np.subtract(x2, along(mean), dtype=dtype)
            out = np.square(xhat)
            var = (self._sums(out, axis) / count).astype(dtype, copy=False)
            inv_std = 1 / np.sqrt(var + dtype.type(self.eps))
            xhat *= along(inv_std)
            np.multiply(xhat, along(gamma), out=out)
            out += along(beta)
            keep = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= keep
            running_mean += (1 - keep) * mean
            running_var *= keep
            running_var += (1 - keep) * var * (count / max(count - 1, 1))
            self._cache = (True, xhat, inv_std)
        else:
            inv_std = 1 / np.sqrt(self.buffers["running_var"].astype(dtype) + dtype.type(self.eps))
            scale = gamma * inv_std
            shift = beta - self.buffers["running_mean"] * scale
            out = np.multiply(x2, along(scale), dtype=dtype)
            out += along(shift)
            self._cache = (False, x2, inv_std)
        self._layout = (x.shape, axis)
        return self._restore(out, x.shape, axis == 0)

    def backward(self, grad_out):
        training, saved, inv_std = self._cache
        shape, axis = self._layout
        g2, _ = self._per_channel(grad_out, like_cache=True)
        def along(v):
            return self._along(v, axis)
        if training:
            xhat = saved
        else:
            xhat = (saved - along(self.buffers["running_mean"])) * along(inv_std)
        product = g2 * xhat
        dgamma = self._sums(product, axis)
        dbeta = self._sums(g2, axis)
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        if not self.needs_input_grad:
            return None
        scale = self.params["gamma"] * inv_std
        if training:
            # dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat))
            count = g2.size // self.channels
            dx = np.multiply(g2, along(scale), dtype=product.dtype)
            np.multiply(xhat, along(-scale * dgamma / count), out=product)
            dx += product
            dx += along(-scale * dbeta / count)
        else:
            dx = g2 * along(scale)
        return self._restore(dx, shape, axis == 0)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.channels:
            raise ValueError(f"BatchNorm2D expects ({self.channels}, H, W) samples, got {input_shape}")
        return tuple(input_shape)

    def config(self):
        return {"type": self.kind, "channels": self.channels, "momentum": self.momentum, "eps": self.eps}

    def array_shapes(self):
        return {name: (self.channels,) for name in ("gamma", "beta", *self.buffer_names)}
