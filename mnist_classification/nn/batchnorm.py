"""Batch normalisation for convolutional feature maps (Ioffe & Szegedy 2015).

:class:`BatchNorm2D` normalises each channel of an (N, C, H, W) batch over its
N * H * W values, then scales by ``gamma`` and shifts by ``beta`` (trainable,
not weight-decayed). In training it uses the batch statistics and updates the
running statistics ``running = momentum * running + (1 - momentum) * batch``
(the running variance takes the unbiased batch variance); at inference it
uses the running statistics, which are saved in the model file as buffers.
With ``activation="relu"`` it also applies ReLU to its output in the same pass
(and backward takes the ReLU's mask from that output, which in training a next
convolution keeps anyway): one pass over the feature maps instead of three, and
no mask kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mnist_classification.nn import parallel
from mnist_classification.nn.layers import FLOAT, Layer
from mnist_classification.nn.layout import (
    channel_major,
    channels_last,
    from_channel_major,
    from_channels_last,
    is_channels_last,
)


#: Channels-last batches are normalised as rows of about this many values
#: (see BatchNorm2D._per_channel).
FOLD_WIDTH = 16384

#: Activations that batch norm can apply in its own pass.
FUSED_ACTIVATIONS = ("identity", "relu")

#: Bytes of input one thread normalises at a time (a block stays in the cache between passes).
BLOCK_BYTES = 1 << 20

_LAYOUTS = {  # name: (to that layout's memory, (N, C, H, W) view of it, its shape from (n, c, h, w))
    "channel_major": (channel_major, from_channel_major, lambda n, c, h, w: (c, n, h, w)),
    "channels_last": (channels_last, from_channels_last, lambda n, c, h, w: (n, h, w, c)),
}


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of (N, C, H, W) feature maps, in their memory layout
    (channel-major or channels-last, see :mod:`.layout`; other layouts are copied once).

    The batch is cut into cache-sized blocks that the cores take in turn (:mod:`.parallel`): the
    statistics combine per-block means and squared deviations (Chan et al.), and every
    elementwise pass over a block runs while it is in the cache. Backward recomputes the
    normalised input from the saved input instead of keeping it.
    """

    kind = "batchnorm2d"
    buffer_names = ("running_mean", "running_var")

    def __init__(self, channels: int, momentum: float = 0.9, eps: float = 1e-5, activation: str = "identity",
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = int(channels), float(momentum), float(eps)
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(FUSED_ACTIVATIONS)}, not {activation!r}")
        self.activation = activation
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
        self._cache = None

    @staticmethod
    def _layout_of(x: np.ndarray) -> str:
        if is_channels_last(x):
            return "channels_last"
        return "channel_major"

    def _per_channel(self, x: np.ndarray, layout: str) -> tuple[np.ndarray, int, int]:
        """x (N, C, H, W) as a matrix in ``layout``'s memory (a view unless x is in another layout),
        the axis along which a channel's values run and the fold r: channel-major gives (C, M), one
        channel per row (axis 1, r = 1); the others give (M / r, r * C), r pixels' channels per
        row (axis 0), r chosen so that per-channel broadcasts run over rows of about FOLD_WIDTH
        values rather than C."""
        a = _LAYOUTS[layout][0](x)
        if layout == "channel_major":
            return a.reshape(self.channels, -1), 1, 1
        fold = math.gcd(a.size // self.channels, max(1, FOLD_WIDTH // self.channels))
        return a.reshape(-1, fold * self.channels), 0, fold

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchNorm2D expects (N, {self.channels}, H, W), got {x.shape}")
        layout = self._layout_of(x)
        x2, axis, fold = self._per_channel(x, layout)
        blocks = _Blocks(x2, axis, fold, self.channels)
        gamma, beta = self.params["gamma"], self.params["beta"]
        dtype = np.result_type(x.dtype, gamma.dtype)
        if training:
            mean, var = blocks.mean_var()
            count = blocks.count
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= self.momentum
            running_mean += ((1 - self.momentum) * mean).astype(running_mean.dtype)
            running_var *= self.momentum
            running_var += ((1 - self.momentum) * var * (count / max(count - 1, 1))).astype(running_var.dtype)
        else:
            mean, var = self.buffers["running_mean"].astype(np.float64), self.buffers["running_var"].astype(np.float64)
        inv_std = 1 / np.sqrt(var + self.eps)
        mean, inv_std = mean.astype(dtype), inv_std.astype(dtype)
        scale = (gamma * inv_std).astype(dtype)
        shift = (beta - mean * scale).astype(dtype)
        relu = self.activation == "relu"
        out = blocks.affine(scale, shift, dtype, relu)
        # With the ReLU, backward takes its mask from the output: kept in training (a next convolution keeps
        # it anyway; before pooling it costs one feature map), recomputed at inference (nothing else keeps it).
        self._cache = (training, x2, layout, x.shape, mean, inv_std, scale, shift, out if relu and training else None)
        return self._restore(out, x.shape, layout)

    @staticmethod
    def _restore(a: np.ndarray, shape: tuple[int, ...], layout: str) -> np.ndarray:
        """The (N, C, H, W) view of a matrix from :meth:`_per_channel`."""
        _, view, memory_shape = _LAYOUTS[layout]
        return view(a.reshape(memory_shape(*shape)))

    def backward(self, grad_out):
        if self._cache is None:
            raise RuntimeError("BatchNorm2D.backward needs a preceding forward(x)")
        (training, x2, layout, shape, mean, inv_std, scale, shift, output), self._cache = self._cache, None
        g2, axis, fold = self._per_channel(grad_out, layout)
        if self.activation == "relu" and output is None:
            output = _Blocks(x2, axis, fold, self.channels).affine(scale, shift, scale.dtype, relu=True)
        blocks = _Blocks(x2, axis, fold, self.channels, output)
        dgamma, dbeta, g2 = blocks.gamma_beta_grads(g2, mean, inv_std)
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta
        if not self.needs_input_grad:
            return None
        statistics = (dgamma, dbeta) if training else (None, None)  # at inference the statistics are constants
        dx = blocks.input_grad(g2, mean, inv_std, scale, *statistics, out=None if output is None else g2)
        return self._restore(dx, shape, layout)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.channels:
            raise ValueError(f"BatchNorm2D expects ({self.channels}, H, W) samples, got {input_shape}")
        return tuple(input_shape)

    def config(self):
        config = {"type": self.kind, "channels": self.channels, "momentum": self.momentum, "eps": self.eps}
        if self.activation != "identity":
            config["activation"] = self.activation
        return config

    def array_shapes(self):
        return {name: (self.channels,) for name in ("gamma", "beta", *self.buffer_names)}


class _Blocks:
    """A per-channel matrix ``a`` from :meth:`BatchNorm2D._per_channel` (channels along ``axis``,
    ``fold`` pixels per row when axis is 0), cut into cache-sized blocks along its long axis."""

    def __init__(self, a: np.ndarray, axis: int, fold: int, channels: int,
                 relu_output: np.ndarray | None = None) -> None:
        """``relu_output``: forward's output (a matrix like ``a``) when a ReLU was fused, else None."""
        self.a, self.axis, self.fold, self.channels = a, axis, fold, channels
        self.count = a.size // channels
        self.spans = parallel.blocks(a.shape[axis], a.itemsize * a.shape[1 - axis], BLOCK_BYTES)
        self.relu_output = relu_output

    def _take(self, m: np.ndarray, start: int, stop: int) -> np.ndarray:
        return m[start:stop] if self.axis == 0 else m[:, start:stop]

    def _along(self, v: np.ndarray) -> np.ndarray:
        """Per-channel values (C,) shaped to broadcast against the matrix."""
        return np.tile(v, self.fold)[None, :] if self.axis == 0 else v[:, None]

    def _sums(self, b: np.ndarray) -> np.ndarray:
        """Per-channel sums (C,) of block ``b``, as a product with a vector of ones (BLAS: several
        times faster than ``sum`` over the long axis of a narrow matrix)."""
        ones = parallel.scratch().ones(b.shape[self.axis], b.dtype)
        if self.axis == 0:
            return (ones @ b).reshape(self.fold, self.channels).sum(axis=0)
        return b @ ones

    def _centred(self, start: int, stop: int, mean: np.ndarray) -> np.ndarray:
        """x - mean of one block, in this thread's scratch."""
        b = self._take(self.a, start, stop)
        centred = parallel.scratch().get("centred", b.shape, mean.dtype)
        np.subtract(b, mean, out=centred)
        return centred

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and (biased) variance over the whole matrix, float64 (C,) each."""
        def block(start, stop):
            b = self._take(self.a, start, stop)
            count = b.size // self.channels
            mean = self._sums(b) / count
            deviation = self._centred(start, stop, self._along(mean))
            np.square(deviation, out=deviation)
            return count, mean.astype(np.float64), self._sums(deviation).astype(np.float64)

        parts = parallel.run(block, self.spans)
        counts = np.array([count for count, _, _ in parts], dtype=np.float64)[:, None]
        means = np.stack([mean for _, mean, _ in parts])
        mean = (counts * means).sum(axis=0) / self.count
        squares = sum(m2 for _, _, m2 in parts) + (counts * (means - mean) ** 2).sum(axis=0)
        return mean, squares / self.count

    def affine(self, scale: np.ndarray, shift: np.ndarray, dtype, relu: bool) -> np.ndarray:
        """New ``a * scale + shift`` (per channel), then ReLU'd (``max(y, 0)``) if ``relu``."""
        out = np.empty(self.a.shape, dtype=dtype)
        scale, shift = self._along(scale), self._along(shift)
        zeros = np.zeros_like(shift)

        def block(start, stop):
            o = self._take(out, start, stop)
            np.multiply(self._take(self.a, start, stop), scale, out=o)
            o += shift
            if relu:
                np.maximum(o, zeros, out=o)  # a row of zeros: NumPy's loop with a scalar 0 is 2 times slower

        parallel.run(block, self.spans)
        return out

    def gamma_beta_grads(self, g: np.ndarray, mean: np.ndarray, inv_std: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sum of g' * xhat, sum of g') per channel and g' itself, for upstream gradients g shaped like
        the matrix: g' is g, or with a fused ReLU a new g * (output > 0)."""
        mean = self._along(mean)
        output = self.relu_output
        masked = g if output is None else np.empty(g.shape, dtype=np.result_type(g.dtype, output.dtype))

        def block(start, stop):
            gb = self._take(masked, start, stop)
            if output is not None:
                mask = parallel.scratch().get("relu_mask", gb.shape, np.bool_)
                np.greater(self._take(output, start, stop), 0, out=mask)
                np.multiply(self._take(g, start, stop), mask, out=gb)
            centred = self._centred(start, stop, mean)
            centred *= gb
            return self._sums(centred), self._sums(gb)

        parts = parallel.run(block, self.spans)
        dgamma, dbeta = (part.copy() for part in parts[0])
        for part_gamma, part_beta in parts[1:]:
            dgamma += part_gamma
            dbeta += part_beta
        dgamma *= inv_std
        return dgamma, dbeta, masked

    def input_grad(self, g: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, scale: np.ndarray,
                   dgamma: np.ndarray | None, dbeta: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        """Input gradient for upstream gradients g (g' of :meth:`gamma_beta_grads`), written to ``out``
        (may be g itself) or a new array: in training gamma / std * (g - mean(g) - xhat * mean(g * xhat)),
        computed as scale * g - (scale * inv_std * mean(g * xhat)) * (x - mean) - scale * mean(g);
        with ``dgamma`` None (inference: the running statistics are constants) gamma / std * g."""
        dx = np.empty(g.shape, dtype=np.result_type(g.dtype, scale.dtype)) if out is None else out
        mean, scale_g = self._along(mean), self._along(scale)
        statistics = dgamma is not None
        if statistics:
            scale_centred = self._along(-scale * inv_std * dgamma / self.count)
            offset = self._along(-scale * dbeta / self.count)

        def block(start, stop):
            d = self._take(dx, start, stop)
            np.multiply(self._take(g, start, stop), scale_g, out=d)
            if statistics:
                centred = self._centred(start, stop, mean)
                centred *= scale_centred
                d += centred
                d += offset

        parallel.run(block, self.spans)
        return dx
