"""'Same' k x k convolutions of channels-last tensors by im2col over cache-sized blocks of images, on all cores.

Tensors are channels-last, (N, H, W, C) memory, so a block of images is one
contiguous slab. Each block (sized so that its column matrix stays in the
cache, :data:`COLUMN_BUDGET`) is handled by one thread (see :mod:`.parallel`):
it zero-pads the block, copies its k*k shifted windows into the columns
``cols`` (n*H*W, k*k*C) and multiplies, with ``Wk`` (k*k*C, F) the kernel with
rows ordered (offset, channel):

* forward: ``Y (n*H*W, F) = cols @ Wk + b``;
* backward: ``dWk = sum over blocks of cols.T @ dY`` (the columns rebuilt from the
  saved input: cheaper than keeping k*k copies of every input in memory),
  ``db = sum of dY rows`` and ``dX = cols(dY) @ Wr``: the 'same' convolution of dY
  with the kernel rotated by 180 degrees, its channel axes swapped (Wr (k*k*F, C));
  its products are as long as the forward's (the col2im form, ``dY @ Wk.T`` added
  back at k*k offsets, multiplies over only F and ran about half as fast).

The products are those of :mod:`.conv`'s reference im2col, in another order.

:func:`winograd_forward` and :func:`winograd_backward` run :mod:`.winograd`'s F(2x2, 3x3) on the
same blocks instead (each block turned spatial-major in the cache); backward recomputes the
transformed input tiles from the saved input.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mnist_classification.nn import parallel, winograd

#: Bytes of one thread's column matrix (L2 + a share of L3 on the machines measured: 2 to 4 MiB
#: blocks ran 1.6 to 2 times faster than whole-batch columns, 8 MiB blocks no faster than those).
COLUMN_BUDGET = 4 << 20

#: With at least this many channels the columns are copied window by window (runs of k*C values)
#: rather than offset by offset (runs of C values interleaved with the other offsets): 1.8 times
#: faster for 32 and 64 channels, 3.5 times slower for one.
WINDOW_COPY_CHANNELS = 8


def kernel_matrix(weight: np.ndarray, channels: int, k: int) -> np.ndarray:
    """Kernel (F, C*k*k), flattened from (F, C, k, k) -> Wk (k*k*C, F), row ``offset * C + channel``."""
    f = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(f, channels, k * k).transpose(2, 1, 0).reshape(k * k * channels, f))


def kernel_matrix_adjoint(wk: np.ndarray, channels: int, k: int) -> np.ndarray:
    """Inverse of :func:`kernel_matrix`: Wk (k*k*C, F) -> (F, C*k*k)."""
    f = wk.shape[1]
    return wk.reshape(k * k, channels, f).transpose(2, 1, 0).reshape(f, channels * k * k)


def rotated_kernel_matrix(wk: np.ndarray, k: int) -> np.ndarray:
    """Wk (k*k*C, F) -> Wr (k*k*F, C): the kernel rotated by 180 degrees with its channel axes swapped,
    row ``offset * F + output channel``."""
    f = wk.shape[1]
    c = wk.shape[0] // (k * k)
    return np.ascontiguousarray(wk.reshape(k * k, c, f)[::-1].transpose(0, 2, 1).reshape(k * k * f, c))


def _spans(n: int, pixels: int, k: int, channels: int, itemsize: int) -> list[tuple[int, int]]:
    return parallel.blocks(n, pixels * k * k * channels * itemsize, COLUMN_BUDGET)


def _columns(x: np.ndarray, k: int, work) -> np.ndarray:
    """The (n*H*W, k*k*C) column matrix of block ``x`` (n, H, W, C), in ``work``'s scratch."""
    n, h, w, c = x.shape
    p = k // 2
    padded = work.get("padded", (n, h + 2 * p, w + 2 * p, c), x.dtype)
    if p:
        padded[:, :p] = 0
        padded[:, h + p:] = 0
        padded[:, p:h + p, :p] = 0
        padded[:, p:h + p, w + p:] = 0
    padded[:, p:h + p, p:w + p] = x
    cols = work.get("cols", (n, h, w, k, k, c), x.dtype)
    if c >= WINDOW_COPY_CHANNELS:  # one copy of every window: runs of k * C contiguous values
        np.copyto(cols, sliding_window_view(padded, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3))
    else:  # one copy per offset: runs of W * C values
        for i in range(k):
            for j in range(k):
                cols[:, :, :, i, j] = padded[:, i:i + h, j:j + w]
    return cols.reshape(n * h * w, k * k * c)


def forward(x: np.ndarray, wk: np.ndarray, bias: np.ndarray, k: int) -> np.ndarray:
    """Convolve channels-last x (N, H, W, C) with Wk (k*k*C, F) and bias (F,) -> new y (N, H, W, F)."""
    n, h, w, _ = x.shape
    f = wk.shape[1]
    y = np.empty((n, h, w, f), dtype=np.result_type(x.dtype, wk.dtype))

    def block(start, stop):
        out = y[start:stop].reshape(-1, f)
        np.matmul(_columns(x[start:stop], k, parallel.scratch()), wk, out=out)
        out += bias

    parallel.run(block, _spans(n, h * w, k, x.shape[3], x.itemsize))
    return y


def backward(x: np.ndarray, dy: np.ndarray, wk: np.ndarray, k: int,
             input_grad: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`forward` for its input x (N, H, W, C) and dy (N, H, W, F):
    (dWk (k*k*C, F), db (F,), dx (N, H, W, C) or None unless ``input_grad``)."""
    n, h, w, c = x.shape
    f = wk.shape[1]
    dx = np.empty((n, h, w, c), dtype=np.result_type(dy.dtype, wk.dtype)) if input_grad else None
    wr = rotated_kernel_matrix(wk, k)

    def block(start, stop):
        work = parallel.scratch()
        dy2 = dy[start:stop].reshape(-1, f)
        grad_w = _columns(x[start:stop], k, work).T @ dy2
        grad_b = work.ones(len(dy2), dy2.dtype) @ dy2
        if dx is not None:  # the input's columns are spent: their scratch takes dY's
            np.matmul(_columns(dy[start:stop], k, work), wr, out=dx[start:stop].reshape(-1, c))
        return grad_w, grad_b

    grad_w, grad_b = _summed(parallel.run(block, _spans(n, h * w, k, max(c, f), dy.itemsize)))
    return grad_w, grad_b, dx


def _summed(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Elementwise sums of the blocks' partial results, added in block order."""
    totals = tuple(part.copy() for part in parts[0])
    for part in parts[1:]:
        for total, value in zip(totals, part):
            total += value
    return totals


def winograd_forward(x: np.ndarray, u: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 convolution of channels-last x (N, H, W, C) with U (16, C, F) from
    :func:`.winograd.transform_weights` and bias (F,) -> new y (N, H, W, F)."""
    n, h, w, c = x.shape
    f = u.shape[2]
    y = np.empty((n, h, w, f), dtype=np.result_type(x.dtype, u.dtype))

    def block(start, stop):
        work = parallel.scratch()
        xs = work.get("spatial", (h, w, stop - start, c), x.dtype)
        np.copyto(xs, x[start:stop].transpose(1, 2, 0, 3))
        y[start:stop] = winograd.forward(xs, u, bias, work, scratch_output=True).transpose(2, 0, 1, 3)

    parallel.run(block, _spans(n, h * w, 3, max(c, f), x.itemsize))
    return y


def winograd_backward(x: np.ndarray, dy: np.ndarray, u: np.ndarray,
                      input_grad: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`winograd_forward` for its input x (N, H, W, C) and dy (N, H, W, F):
    (dU (16, C, F), db (F,), dx (N, H, W, C) or None unless ``input_grad``)."""
    n, h, w, c = x.shape
    f = u.shape[2]
    dx = np.empty((n, h, w, c), dtype=np.result_type(dy.dtype, u.dtype)) if input_grad else None

    def block(start, stop):
        work = parallel.scratch()
        m = stop - start
        xs = work.get("spatial", (h, w, m, c), x.dtype)
        np.copyto(xs, x[start:stop].transpose(1, 2, 0, 3))
        v = winograd.transform_input(xs, work)
        dys = work.get("spatial_dy", (h, w, m, f), dy.dtype)
        np.copyto(dys, dy[start:stop].transpose(1, 2, 0, 3))
        du = np.empty_like(u)
        dxs = winograd.backward(dys, u, v, du, work, input_grad, scratch_output=True)
        if dx is not None:
            dx[start:stop] = dxs.transpose(2, 0, 1, 3)
        dy2 = dy[start:stop].reshape(-1, f)
        return du, work.ones(len(dy2), dy2.dtype) @ dy2

    grad_u, grad_b = _summed(parallel.run(block, _spans(n, h * w, 3, max(c, f), dy.itemsize)))
    return grad_u, grad_b, dx
