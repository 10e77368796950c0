"""Convolution layers: 2-D convolution by im2col, max pooling and the CNN feature extractor.

Tensors are (N, C, H, W). :class:`Conv2D` uses 'same' zero padding and stride
1, so it keeps H and W; :class:`MaxPool2D` halves them (for ``size=2``).

How the convolution runs (one BLAS matrix multiply per product):

* forward: the input is copied once into channel-major layout (C, N, H, W);
  im2col copies it k*k times (one shifted slice per kernel offset, borders
  zero-filled) into a column matrix ``cols`` (C*k*k, N*H*W); then
  ``Y = W @ cols`` with W (F, C*k*k) gives (F, N*H*W), which is transposed
  back to (N, F, H, W) while the bias is added.
* backward: ``dW = dY @ cols.T`` and ``db = sum(dY)``. The input gradient
  ``dX = col2im(W.T @ dY)`` is computed in its equivalent, faster form: the
  gradient of a stride-1 'same' convolution is the 'same' convolution of dY
  with the kernel rotated by 180 degrees and its channel axes swapped, i.e.
  im2col of dY and ``W_rot (C, F*k*k) @ cols_dY``. Each input pixel gathers
  its k*k contributions inside the matrix multiply instead of in k*k strided
  scatter-adds over the image (measured about twice as fast as col2im here).

The big column matrix lives in a per-layer buffer that is reused from batch to
batch (it grows when a larger batch arrives) and shared by the forward columns
and the backward dY columns, which are never needed at the same time. At
inference, batches are split into chunks so that the column matrix stays
below ~128 MB whatever the batch size.
"""

from __future__ import annotations

import numpy as np

from .batchnorm import BatchNorm2D
from .initialisation import init_weights
from .layers import ACTIVATIONS, FLOAT, Layer

#: Inference splits batches so that one column matrix holds at most this many elements.
INFERENCE_COLUMN_BUDGET = 1 << 25


def _im2col(src: np.ndarray, cols: np.ndarray, k: int) -> None:
    """Fill ``cols`` (C, k, k, N, H, W) with the 'same'-padded k x k neighbourhoods of ``src`` (C, N, H, W).

    ``cols[c, i, j, n, h, w] = src[c, n, h + i - k//2, w + j - k//2]``, zero outside the image.
    """
    p = k // 2
    height, width = src.shape[2:]
    for i in range(k):
        di = i - p
        h0, h1 = max(0, -di), min(height, height - di)
        for j in range(k):
            dj = j - p
            w0, w1 = max(0, -dj), min(width, width - dj)
            dst = cols[:, i, j]
            if h0 >= h1 or w0 >= w1:  # kernel wider than the image: this offset sees only padding
                dst[...] = 0
                continue
            dst[:, :, h0:h1, w0:w1] = src[:, :, h0 + di:h1 + di, w0 + dj:w1 + dj]
            if h0 > 0:
                dst[:, :, :h0] = 0
            if h1 < height:
                dst[:, :, h1:] = 0
            if w0 > 0:
                dst[:, :, h0:h1, :w0] = 0
            if w1 < width:
                dst[:, :, h0:h1, w1:] = 0


class _Workspace:
    """Flat scratch arrays that are reused while their size and dtype fit."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = int(np.prod(shape))
        array = self._arrays.get(name)
        if array is None or array.dtype != dtype or array.size < size:
            array = np.empty(size, dtype=dtype)
            self._arrays[name] = array
        return array[:size].reshape(shape)

    def clear(self) -> None:
        self._arrays.clear()


class Conv2D(Layer):
    """2-D convolution, 'same' zero padding, stride 1: (N, C, H, W) -> (N, F, H, W).

    ``W`` is (F, C*k*k), flattened from (F, C, k, k); ``b`` is (F,). ``kernel_size`` must be odd.
    """

    kind = "conv2d"
    decayed = ("W",)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, init: str = "he",
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.init = int(kernel_size), init
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("channel counts must be positive")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, not {kernel_size}")
        rng = rng if rng is not None else np.random.default_rng(0)
        k2 = self.kernel_size * self.kernel_size
        fan_in, fan_out = self.in_channels * k2, self.out_channels * k2
        self.params = {
            "W": init_weights(init, (self.out_channels, fan_in), fan_in, fan_out, rng),
            "b": np.zeros(self.out_channels, dtype=FLOAT),
        }
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._work = _Workspace()
        self._cols: np.ndarray | None = None  # forward columns, consumed by backward
        self._input_shape: tuple[int, ...] | None = None

    # -- forward -----------------------------------------------------------------------------------

    def _columns(self, x: np.ndarray) -> np.ndarray:
        """im2col of x (N, C, H, W) into the shared buffer, as a (C*k*k, N*H*W) matrix."""
        n, c, h, w = x.shape
        k = self.kernel_size
        src = self._work.get("input", (c, n, h, w), x.dtype)
        np.copyto(src, x.transpose(1, 0, 2, 3))
        cols = self._work.get("cols", (c, k, k, n, h, w), x.dtype)
        _im2col(src, cols, k)
        return cols.reshape(c * k * k, n * h * w)

    def _forward_into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        f = self.out_channels
        cols = self._columns(x)
        y = self._work.get("y", (f, n * h * w), np.result_type(x.dtype, self.params["W"].dtype))
        np.matmul(self.params["W"], cols, out=y)
        # (F, N, HW) -> (N, F, HW), adding the bias on the way.
        np.add(y.reshape(f, n, h * w).transpose(1, 0, 2), self.params["b"][None, :, None],
               out=out.reshape(n, f, h * w))
        return cols

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D expects (N, {self.in_channels}, H, W), got {x.shape}")
        n, _, h, w = x.shape
        dtype = np.result_type(x.dtype, self.params["W"].dtype)
        out = np.empty((n, self.out_channels, h, w), dtype=dtype)
        if training:
            self._cols = self._forward_into(x, out)
            self._input_shape = x.shape
            return out
        self._cols = None
        per_sample = self.in_channels * self.kernel_size ** 2 * h * w
        chunk = max(1, INFERENCE_COLUMN_BUDGET // per_sample)
        for start in range(0, n, chunk):
            self._forward_into(x[start:start + chunk], out[start:start + chunk])
        return out

    # -- backward ----------------------------------------------------------------------------------

    def backward(self, grad_out):
        if self._cols is None:
            raise RuntimeError("Conv2D.backward needs a preceding forward(x, training=True) "
                               "(and runs once per forward: it reuses the column buffer)")
        cols, self._cols = self._cols, None
        n, c, h, w = self._input_shape
        f, k = self.out_channels, self.kernel_size
        weight = self.params["W"]
        # dY as (F, N, H, W): contiguous rows for the matrix products.
        dy = self._work.get("y", (f, n, h, w), grad_out.dtype)
        np.copyto(dy, grad_out.transpose(1, 0, 2, 3))
        dy2 = dy.reshape(f, n * h * w)
        np.matmul(dy2, cols.T, out=self.grads["W"])
        np.sum(dy2, axis=1, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        # dX = 'same' convolution of dY with the kernel rotated 180 degrees, channels swapped.
        rotated = weight.reshape(f, c, k, k)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, f * k * k)
        dcols = self._work.get("cols", (f, k, k, n, h, w), dy.dtype)  # reuses the forward columns' memory
        _im2col(dy, dcols, k)
        dx = self._work.get("input", (c, n * h * w), np.result_type(dy.dtype, weight.dtype))
        np.matmul(rotated, dcols.reshape(f * k * k, n * h * w), out=dx)
        grad_in = np.empty((n, c, h, w), dtype=dx.dtype)  # fresh: the caller may keep it
        np.copyto(grad_in, dx.reshape(c, n, h, w).transpose(1, 0, 2, 3))
        return grad_in

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D expects ({self.in_channels}, H, W) samples, got {input_shape}")
        return (self.out_channels, *input_shape[1:])

    def config(self):
        return {"type": self.kind, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "init": self.init}


class MaxPool2D(Layer):
    """Non-overlapping ``size`` x ``size`` max pooling: (N, C, H, W) -> (N, C, H // size, W // size).

    Rows and columns beyond a multiple of ``size`` are dropped (and get zero gradient). The
    gradient of each window goes to one maximum: the first in row-major order on ties.
    """

    kind = "maxpool2d"

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.size = int(size)
        if self.size < 1:
            raise ValueError(f"pool size must be positive, not {size}")

    def _windows(self, x: np.ndarray) -> list[np.ndarray]:
        s = self.size
        ho, wo = x.shape[2] // s, x.shape[3] // s
        return [x[:, :, a:ho * s:s, b:wo * s:s] for a in range(s) for b in range(s)]

    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ValueError(f"MaxPool2D expects (N, C, H, W), got {x.shape}")
        views = self._windows(x)
        out = views[0].copy()
        for view in views[1:]:
            np.maximum(out, view, out=out)
        if training:
            # Index of the winning offset: scanning backwards makes the first maximum win ties.
            winner = np.zeros(out.shape, dtype=np.uint8)
            for index in range(len(views) - 1, 0, -1):
                np.copyto(winner, index, where=views[index] == out)
            self._winner, self._input_shape = winner, x.shape
        return out

    def backward(self, grad_out):
        dx = np.zeros(self._input_shape, dtype=grad_out.dtype)
        for index, view in enumerate(self._windows(dx)):
            np.multiply(grad_out, self._winner == index, out=view)
        return dx

    def output_shape(self, input_shape):
        *lead, h, w = input_shape
        return (*lead, h // self.size, w // self.size)

    def config(self):
        return {"type": self.kind, "size": self.size}


CONV_LAYERS = (Conv2D, MaxPool2D, BatchNorm2D)


def conv_feature_layers(channels, kernel_size, batch_norm, activation, init, rng) -> list[Layer]:
    """VGG-style blocks for (N, 1, H, W) input, one per entry of ``channels``:

    Conv2D -> [BatchNorm2D] -> activation -> Conv2D -> [BatchNorm2D] -> activation -> MaxPool2D(2).
    """
    layers: list[Layer] = []
    in_channels = 1
    for out_channels in channels:
        for conv_in in (in_channels, out_channels):
            layers.append(Conv2D(conv_in, out_channels, kernel_size, init, rng))
            if batch_norm:
                layers.append(BatchNorm2D(out_channels))
            layers.append(ACTIVATIONS[activation]())
        layers.append(MaxPool2D(2))
        in_channels = out_channels
    return layers
