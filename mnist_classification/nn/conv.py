"""Convolution layers: 2-D convolution, max pooling and the CNN feature extractor.

Tensors are (N, C, H, W). :class:`Conv2D` uses 'same' zero padding and stride
1, so it keeps H and W; :class:`MaxPool2D` halves them (for ``size=2``).

:class:`Conv2D` has three methods (``train.cnn.conv``): "im2col", the
whole-batch reference described below; "blocked", im2col over cache-sized
blocks of channels-last images on all cores (:mod:`.blocked`); "winograd",
F(2x2, 3x3) on the same blocks (:mod:`.winograd`). The last two produce
channels-last (N, H, W, C) memory, which batch norm, ReLU and pooling keep.

Reference memory layout: the matrix products below naturally produce channel-major
(C, N, H, W) memory, so the conv layers return their (N, C, H, W) results as
transposed *views* of channel-major arrays instead of copying them. NumPy's
elementwise layers (ReLU, ...) keep that layout, batch norm and pooling work
on it directly, and the next convolution reads it without a copy; Flatten's
reshape makes the one copy back to (N, C*H*W) order. Any input layout is
accepted (a non-channel-major input costs one transposing copy).

How the convolution runs (one BLAS matrix multiply per product, no loop over
samples or pixels):

* forward: im2col copies the channel-major input k*k times (one shifted slice
  per kernel offset, borders zero-filled) into a column matrix ``cols``
  (C*k*k, N*H*W); ``Y = W @ cols`` with W (F, C*k*k) gives (F, N*H*W) = the
  channel-major output; the bias is added in place.
* backward: ``dW = dY @ cols.T`` (computed as ``(cols @ dY.T).T``) and
  ``db = sum(dY)``. The input gradient is either ``col2im(W.T @ dY)``
  (k*k strided scatter-adds) or, equivalently, the 'same' convolution of dY
  with the kernel rotated by 180 degrees and its channel axes swapped (im2col
  of dY, then ``W_rot (C, F*k*k) @ cols_dY``). The first moves C*k*k rows, the
  second F*k*k rows but with plain copies; :data:`COL2IM_COST` picks the
  cheaper (col2im for 1 -> 32 and 32 -> 64 channels, the rotated kernel for
  32 -> 32 and 64 -> 64).

The big column matrix lives in a per-layer buffer that is reused from batch to
batch (it grows when a larger batch arrives) and shared by the forward columns
and the backward dY / dcols columns, which are never needed at the same time
(so ``backward`` runs once per training ``forward``). At inference, batches are
split into chunks so that the column matrix stays below ~128 MB whatever the
batch size.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mnist_classification.nn import blocked, parallel, winograd
from mnist_classification.nn.activations import ACTIVATIONS
from mnist_classification.nn.batchnorm import FUSED_ACTIVATIONS, BatchNorm2D
from mnist_classification.nn.initialisation import check_scheme, init_weights
from mnist_classification.nn.layers import FLOAT, Layer
from mnist_classification.nn.layout import (
    channel_major,
    channels_last,
    from_channel_major,
    from_channels_last,
    is_channels_last,
)
from mnist_classification.nn.workspace import Workspace

#: col2im (strided scatter-adds over C*k*k rows) costs about this many times an im2col copy
#: of dY (F*k*k rows) per element: measured on 128-image batches it wins clearly for 1 -> 32
#: channels, slightly for 32 -> 64 and loses by ~20% for 32 -> 32 and 64 -> 64. The backward
#: pass uses col2im for the input gradient when in_channels * COL2IM_COST <= out_channels.
COL2IM_COST = 2

#: Inference splits batches so that one column matrix holds at most this many elements.
INFERENCE_COLUMN_BUDGET = 1 << 25

#: How Conv2D computes: "im2col" (the reference), "blocked" (im2col over cache-sized blocks of
#: images on all cores, see :mod:`.blocked`) or "winograd" (F(2x2, 3x3), 3x3 kernels only).
METHODS = ("im2col", "blocked", "winograd")

#: The winograd method convolves inputs with fewer channels than this by blocked im2col instead
#: (Winograd's transforms cost the same whatever C while its products shrink with it).
DIRECT_BELOW = 4


def _offsets(k: int, height: int, width: int):
    """For each kernel offset (i, j): its shift (di, dj) and the output rows h0:h1, columns w0:w1
    whose shifted source pixel lies inside the image ('same' padding, stride 1)."""
    p = k // 2
    for i in range(k):
        di = i - p
        h0, h1 = max(0, -di), min(height, height - di)
        for j in range(k):
            dj = j - p
            yield i, j, di, dj, h0, h1, max(0, -dj), min(width, width - dj)


def _col2im(dcols: np.ndarray, dx: np.ndarray, k: int) -> None:
    """Adjoint of :func:`_im2col`: ``dx`` (C, N, H, W) = sum over offsets of ``dcols`` (C, k, k, N, H, W)."""
    p = k // 2
    dx[...] = dcols[:, p, p]  # the centre offset covers every pixel
    for i, j, di, dj, h0, h1, w0, w1 in _offsets(k, *dx.shape[2:]):
        if (i, j) == (p, p) or h0 >= h1 or w0 >= w1:
            continue
        dx[:, :, h0 + di:h1 + di, w0 + dj:w1 + dj] += dcols[:, i, j, :, h0:h1, w0:w1]


def _im2col(src: np.ndarray, cols: np.ndarray, k: int) -> None:
    """Fill ``cols`` (C, k, k, N, H, W) with the 'same'-padded k x k neighbourhoods of ``src`` (C, N, H, W).

    ``cols[c, i, j, n, h, w] = src[c, n, h + i - k//2, w + j - k//2]``, zero outside the image.
    """
    height, width = src.shape[2:]
    for i, j, di, dj, h0, h1, w0, w1 in _offsets(k, height, width):
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


class Conv2D(Layer):
    """2-D convolution, 'same' zero padding, stride 1: (N, C, H, W) -> (N, F, H, W).

    ``W`` is (F, C*k*k), flattened from (F, C, k, k); ``b`` is (F,). ``kernel_size`` must be odd.
    """

    kind = "conv2d"
    decayed = ("W",)
    #: How backward computes the input gradient: "col2im", "transposed" (im2col of dY) or "auto".
    input_grad_method = "auto"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, init: str = "he",
                 rng: np.random.Generator | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None, method: str = "im2col") -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.init, self.method = int(kernel_size), check_scheme(init), method
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        if method == "winograd" and self.kernel_size != 3:
            raise ValueError(f"the winograd method needs kernel_size 3, not {kernel_size}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("channel counts must be positive")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, not {kernel_size}")
        if arrays is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            k2 = self.kernel_size * self.kernel_size
            fan_in, fan_out = self.in_channels * k2, self.out_channels * k2
            arrays = {"W": init_weights(init, (self.out_channels, fan_in), fan_in, fan_out, rng),
                      "b": np.zeros(self.out_channels, dtype=FLOAT)}
        self.adopt(arrays)
        self.splits_batch = method != "im2col"
        self._work = Workspace()
        self._cols: np.ndarray | None = None  # forward columns, consumed by backward
        self._blocked: tuple[np.ndarray, np.ndarray] | None = None  # input and Wk or U, for backward
        self._input_shape: tuple[int, ...] | None = None

    # -- forward -----------------------------------------------------------------------------------

    def _forward_into(self, xt: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Convolve channel-major xt (C, N, H, W) into out (F, N, H, W); return the column matrix."""
        c, n, h, w = xt.shape
        k = self.kernel_size
        cols = self._work.get("cols", (c, k, k, n, h, w), xt.dtype)
        _im2col(xt, cols, k)
        cols = cols.reshape(c * k * k, n * h * w)
        # A chunk of the output (inference) is not contiguous: multiply into scratch, then copy.
        direct = out.flags.c_contiguous
        out2 = (out if direct else self._work.get("y", out.shape, out.dtype)).reshape(self.out_channels, -1)
        np.matmul(self.params["W"], cols, out=out2)
        out2 += self.params["b"][:, None]
        if not direct:
            out[...] = out2.reshape(out.shape)
        return cols

    def forward(self, x, training=False):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D expects (N, {self.in_channels}, H, W), got {x.shape}")
        if self.method != "im2col":
            return self._blocked_forward(x, training)
        xt = channel_major(x)
        _, n, h, w = xt.shape
        dtype = np.result_type(x.dtype, self.params["W"].dtype)
        out = np.empty((self.out_channels, n, h, w), dtype=dtype)
        if training:
            self._cols = self._forward_into(xt, out)
            self._input_shape = x.shape
        else:
            self._cols = None
            per_sample = self.in_channels * self.kernel_size ** 2 * h * w
            chunk = max(1, INFERENCE_COLUMN_BUDGET // per_sample)
            for start in range(0, n, chunk):
                self._forward_into(xt[:, start:start + chunk], out[:, start:start + chunk])
        return from_channel_major(out)

    # -- backward ----------------------------------------------------------------------------------

    def _uses_winograd(self) -> bool:
        """Whether the winograd method applies F(2x2, 3x3) here: with fewer than DIRECT_BELOW input
        channels its transforms would cost more than the products they save, so im2col blocks do."""
        return self.method == "winograd" and self.in_channels >= DIRECT_BELOW

    def _blocked_forward(self, x, training):
        xl = channels_last(x)
        weight, bias = self.params["W"], self.params["b"]
        if self._uses_winograd():
            kernel = winograd.transform_weights(weight.reshape(self.out_channels, self.in_channels, 3, 3))
            y = blocked.winograd_forward(xl, kernel, bias)
        else:
            kernel = blocked.kernel_matrix(weight, self.in_channels, self.kernel_size)
            y = blocked.forward(xl, kernel, bias, self.kernel_size)
        self._blocked = (xl, kernel) if training else None
        return from_channels_last(y)

    def _blocked_backward(self, grad_out):
        (xl, kernel), self._blocked = self._blocked, None
        dy = channels_last(grad_out)
        if self._uses_winograd():
            grad_u, self.grads["b"][...], dx = blocked.winograd_backward(xl, dy, kernel, self.needs_input_grad)
            winograd.weight_grad(grad_u, self.grads["W"].reshape(self.out_channels, self.in_channels, 3, 3))
        else:
            k = self.kernel_size
            grad_wk, self.grads["b"][...], dx = blocked.backward(xl, dy, kernel, k, self.needs_input_grad)
            self.grads["W"][...] = blocked.kernel_matrix_adjoint(grad_wk, self.in_channels, k)
        return None if dx is None else from_channels_last(dx)

    def backward(self, grad_out):
        if self._blocked is not None:
            return self._blocked_backward(grad_out)
        if self._cols is None:
            raise RuntimeError("Conv2D.backward needs a preceding forward(x, training=True) "
                               "(and runs once per forward: it reuses the column buffer)")
        cols, self._cols = self._cols, None
        n, c, h, w = self._input_shape
        f, k = self.out_channels, self.kernel_size
        weight = self.params["W"]
        dy = channel_major(grad_out)  # (F, N, H, W)
        dy2 = dy.reshape(f, n * h * w)
        # dW = dY @ cols.T, computed as (cols @ dY.T).T: OpenBLAS handles the tall (C*k*k, F)
        # result better than the wide (F, C*k*k) one with its long inner dimension (about 20%
        # faster alone, and the wide form slows down 20-fold when another process competes
        # for the cores).
        np.copyto(self.grads["W"], (cols @ dy2.T).T)
        np.sum(dy2, axis=1, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        dtype = np.result_type(dy.dtype, weight.dtype)
        dx = np.empty((c, n, h, w), dtype=dtype)
        if self.uses_col2im():
            # dX = col2im(W.T @ dY): the (C*k*k, N*H*W) matrix is small when C << F.
            dcols = self._work.get("cols", (c, k, k, n, h, w), dtype)  # the forward columns' memory
            np.matmul(weight.T, dy2, out=dcols.reshape(c * k * k, n * h * w))
            _col2im(dcols, dx, k)
        else:
            # dX = 'same' convolution of dY with the kernel rotated 180 degrees, channels swapped.
            rotated = weight.reshape(f, c, k, k)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, f * k * k)
            dcols = self._work.get("cols", (f, k, k, n, h, w), dy.dtype)  # the forward columns' memory
            _im2col(dy, dcols, k)
            np.matmul(rotated, dcols.reshape(f * k * k, n * h * w), out=dx.reshape(c, n * h * w))
        return from_channel_major(dx)

    def uses_col2im(self) -> bool:
        """Input-gradient method: col2im when it moves less data than im2col of dY does."""
        if self.input_grad_method != "auto":
            return self.input_grad_method == "col2im"
        return COL2IM_COST * self.in_channels <= self.out_channels

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D expects ({self.in_channels}, H, W) samples, got {input_shape}")
        return (self.out_channels, *input_shape[1:])

    def config(self):
        return {"type": self.kind, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "init": self.init, "method": self.method}

    def array_shapes(self):
        return {"W": (self.out_channels, self.in_channels * self.kernel_size ** 2), "b": (self.out_channels,)}


#: Bytes of input one thread pools at a time (channels-last inputs).
POOL_BLOCK_BYTES = 1 << 20


class MaxPool2D(Layer):
    """Non-overlapping ``size`` x ``size`` max pooling: (N, C, H, W) -> (N, C, H // size, W // size).

    Rows and columns beyond a multiple of ``size`` are dropped (and get zero gradient). The
    gradient of each window goes to one maximum; on ties, to the leftmost, then topmost one.

    Pooling runs in two passes, first across each window's rows, then across its columns, in the
    input's memory layout, which the output keeps: on (N*C, H, W) planes (channel-major or plain
    (N, C, H, W)), or on the (N, H, W, C) pixels of a channels-last input.
    """

    kind = "maxpool2d"

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.size = int(size)
        if self.size < 1:
            raise ValueError(f"pool size must be positive, not {size}")
        self._cache = None

    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ValueError(f"MaxPool2D expects (N, C, H, W), got {x.shape}")
        s = self.size
        n, c, h, w = x.shape
        ho, wo = h // s, w // s
        if is_channels_last(x) and not x.flags.c_contiguous:
            return self._forward_channels_last(x, training)
        channel_first = not x.flags.c_contiguous
        planes = (channel_major(x) if channel_first else x).reshape(n * c, h, w)
        if (ho * s, wo * s) != (h, w):
            planes = np.ascontiguousarray(planes[:, :ho * s, :wo * s])
        # First across each window's rows, on contiguous image rows: (P * Ho, s, W) -> (P * Ho, W).
        rows = planes.reshape(n * c * ho, s, wo * s)
        row_max, row_arg = self._reduced([rows[:, a] for a in range(s)])
        # Then across its columns: (P * Ho * Wo, s) -> (P * Ho * Wo,).
        pairs = row_max.reshape(-1, s)
        out, col_arg = self._reduced([pairs[:, b] for b in range(s)])
        self._cache = (x.shape, channel_first, row_arg, col_arg) if training else None
        if channel_first:
            return from_channel_major(out.reshape(c, n, ho, wo))
        return out.reshape(n, c, ho, wo)

    def backward(self, grad_out):
        if self._cache is None:
            raise RuntimeError("MaxPool2D.backward needs a preceding forward(x, training=True)")
        (n, c, h, w), channel_first, row_arg, col_arg = self._cache
        if channel_first is None:
            return self._backward_channels_last(grad_out)
        s = self.size
        ho, wo = h // s, w // s
        g = (channel_major(grad_out) if channel_first else np.ascontiguousarray(grad_out)).reshape(-1)
        # Each window's gradient goes to its winning column of the row maxima ...
        g_cols = np.empty((g.size, s), dtype=grad_out.dtype)
        for b in range(s):
            np.multiply(g, col_arg == b, out=g_cols[:, b])
        g_cols = g_cols.reshape(n * c * ho, wo * s)
        # ... and from there to the winning row.
        planes = np.zeros((c, n, h, w) if channel_first else (n, c, h, w), dtype=grad_out.dtype)
        window = planes.reshape(n * c, h, w)[:, :ho * s, :wo * s]
        if (ho * s, wo * s) == (h, w):
            rows = window.reshape(n * c * ho, s, wo * s)
            for a in range(s):
                np.multiply(g_cols, row_arg == a, out=rows[:, a])
        else:
            rows = np.empty((n * c * ho, s, wo * s), dtype=grad_out.dtype)
            for a in range(s):
                np.multiply(g_cols, row_arg == a, out=rows[:, a])
            window[...] = rows.reshape(window.shape)
        return from_channel_major(planes) if channel_first else planes

    @staticmethod
    def _reduce_into(slices, best, arg, wins):
        """``best`` = elementwise max over ``slices``, ``arg`` (uint8) = index of the first slice holding
        it; ``wins`` is bool scratch shaped like them."""
        if len(slices) == 1:
            np.copyto(best, slices[0])
            arg.fill(0)
            return
        np.greater(slices[1], slices[0], out=arg.view(np.bool_))
        np.maximum(slices[0], slices[1], out=best)
        for index, candidate in enumerate(slices[2:], start=2):
            np.greater(candidate, best, out=wins)  # strictly: on ties the earlier slice keeps winning
            np.copyto(arg, np.uint8(index), where=wins)
            np.maximum(best, candidate, out=best)

    @classmethod
    def _reduced(cls, slices):
        """New (max, index of the first slice holding it) arrays of :meth:`_reduce_into` over ``slices``."""
        best = np.empty(slices[0].shape, dtype=slices[0].dtype)
        arg = np.empty(best.shape, dtype=np.uint8)
        cls._reduce_into(slices, best, arg, np.empty(best.shape, dtype=np.bool_))
        return best, arg

    def _forward_channels_last(self, x, training):
        """Pooling of channels-last x -> (N, Ho, Wo, C) memory, by blocks of images on all cores, each
        block's (n, Ho, s, Wo * s, C) windows reduced across their rows, then their columns."""
        s = self.size
        n, c, h, w = x.shape
        ho, wo = h // s, w // s
        windows = channels_last(x)[:, :ho * s, :wo * s].reshape(n, ho, s, wo * s, c)
        out = np.empty((n, ho, wo, c), dtype=x.dtype)
        row_arg = np.empty((n, ho, wo * s, c), dtype=np.uint8)
        col_arg = np.empty((n, ho, wo, c), dtype=np.uint8)

        def block(start, stop):
            work = parallel.scratch()
            m = stop - start
            rows = work.get("pool_rows", (m, ho, wo * s, c), x.dtype)
            self._reduce_into([windows[start:stop, :, a] for a in range(s)], rows, row_arg[start:stop],
                              work.get("pool_mask", rows.shape, np.bool_))
            pairs = rows.reshape(m, ho, wo, s, c)
            self._reduce_into([pairs[:, :, :, b] for b in range(s)], out[start:stop], col_arg[start:stop],
                              work.get("pool_mask", (m, ho, wo, c), np.bool_))

        parallel.run(block, parallel.blocks(n, h * w * c * x.itemsize, POOL_BLOCK_BYTES))
        self._cache = (x.shape, None, row_arg, col_arg) if training else None
        return from_channels_last(out)

    def _backward_channels_last(self, grad_out):
        """Each window's gradient to its winning column of the row maxima, then to the winning row."""
        (n, c, h, w), _, row_arg, col_arg = self._cache
        s = self.size
        ho, wo = h // s, w // s
        g = channels_last(grad_out)
        cropped = (ho * s, wo * s) != (h, w)  # then the dropped rows and columns get zero gradient
        pixels = (np.zeros if cropped else np.empty)((n, h, w, c), dtype=grad_out.dtype)
        windows = pixels[:, :ho * s, :wo * s].reshape(n, ho, s, wo * s, c)

        def block(start, stop):
            work = parallel.scratch()
            m = stop - start
            columns = work.get("pool_grad", (m, ho, wo, s, c), grad_out.dtype)
            mask = work.get("pool_mask", (m, ho, wo, c), np.bool_)
            for b in range(s):
                np.equal(col_arg[start:stop], b, out=mask)
                np.multiply(g[start:stop], mask, out=columns[:, :, :, b])
            columns = columns.reshape(m, ho, wo * s, c)
            mask = work.get("pool_mask", columns.shape, np.bool_)
            for a in range(s):
                np.equal(row_arg[start:stop], a, out=mask)
                np.multiply(columns, mask, out=windows[start:stop, :, a])

        parallel.run(block, parallel.blocks(n, h * w * c * grad_out.itemsize, POOL_BLOCK_BYTES))
        return from_channels_last(pixels)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects (C, H, W) samples, got {tuple(input_shape)}")
        c, h, w = input_shape
        return (c, h // self.size, w // self.size)

    def config(self):
        return {"type": self.kind, "size": self.size}


CONV_LAYERS = (Conv2D, MaxPool2D, BatchNorm2D)


def conv_feature_layers(channels, kernel_size, batch_norm, activation, init, rng,
                        conv: str = "auto") -> list[Layer]:
    """VGG-style blocks for (N, 1, H, W) input, one per entry of ``channels``:

    Conv2D -> [BatchNorm2D] -> activation -> Conv2D -> [BatchNorm2D] -> activation -> MaxPool2D(2).
    ``conv`` is a :data:`METHODS` entry, or "auto": the fastest measured, blocked im2col. Batch norm
    applies a ReLU itself (one pass over the feature maps instead of three).
    """
    method = conv if conv in METHODS else "blocked"
    layers: list[Layer] = []
    in_channels = 1
    for out_channels in channels:
        for conv_in in (in_channels, out_channels):
            layers.append(Conv2D(conv_in, out_channels, kernel_size, init, rng, method=method))
            if batch_norm and activation in FUSED_ACTIVATIONS:
                layers.append(BatchNorm2D(out_channels, activation=activation))
                continue
            if batch_norm:
                layers.append(BatchNorm2D(out_channels))
            layers.append(ACTIVATIONS[activation]())
        layers.append(MaxPool2D(2))
        in_channels = out_channels
    return layers
