"""Winograd minimal filtering F(2x2, 3x3) for 'same' 3x3 convolutions of spatial-major tensors.

Tensors here are spatial-major, (H, W, N, C): each pixel holds one contiguous
(N, C) block, so a shift by rows or columns is a slice of the outer axes and
every addition below runs over long contiguous blocks. Each 2 x 2 output tile
comes from the 4 x 4 input tile around it (Lavin & Gray 2016)::

    Y_tile = A^T [ (G g G^T) * (B^T d B) ] A

The products, summed over input channels, become 16 matrix products, one per
tile frequency xi = 4b + a (a: row, b: column frequency):
M[xi] (T, F) = V[xi] (T, C) @ U[xi] (C, F), T = tile rows * tile columns * N.
F(2x2, 3x3) multiplies 16 times per 4 outputs where im2col multiplies 36
(2.25 times fewer). B and A hold only 0 and +-1: their transforms are additions
of whole slices, rows first, then columns. Backward stays in the transform
domain with the adjoint transforms: dM = A dY A^T, dU[xi] = V[xi]^T dM[xi],
dV[xi] = dM[xi] U[xi]^T, dX = B dV B^T added onto the overlapping tiles,
dW = G^T dU G.

Both passes run over blocks of tile rows (:data:`BLOCK_ELEMENTS`), which bounds
the scratch arrays (large inference batches) while keeping the matrix products few.
"""

from __future__ import annotations

import numpy as np

from mnist_classification.nn.workspace import Workspace

#: Weight transform G (4, 3) of F(2x2, 3x3).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

#: Frequency (a, b) = (1, 1): A^T's second column is all ones, so a constant added to M there
#: reaches every output of the tile once - that is where the bias goes.
BIAS_FREQUENCY = 4 * 1 + 1

#: A block of tile rows holds at most about this many elements per transformed array (16 x T x C;
#: the default CNN's training batches of 128 are one block). Larger blocks mean fewer BLAS calls:
#: with other jobs on the cores each multi-threaded call can wait for a descheduled OpenBLAS
#: thread, and blocks of 2^22 trained 3 times slower than whole-batch blocks under load.
BLOCK_ELEMENTS = 1 << 24


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """Kernel (F, C, 3, 3) -> U (16, C, F) of the kernel's dtype, U[4b + a, c, f] = (G w[f, c] G^T)[a, b]."""
    f, c = weight.shape[:2]
    u = np.einsum("ai,fcij,bj->bacf", G, weight.astype(np.float64), G)
    return u.reshape(16, c, f).astype(weight.dtype)


def weight_grad(du: np.ndarray, out: np.ndarray) -> None:
    """Adjoint of :func:`transform_weights`: dU (16, C, F) -> dW (F, C, 3, 3), written into ``out``."""
    c, f = du.shape[1:]
    out[...] = np.einsum("ai,bacf,bj->fcij", G, du.reshape(4, 4, c, f).astype(np.float64), G)


def tiles(height: int, width: int) -> tuple[int, int]:
    """Tile rows and columns of the 2 x 2 output tiles covering an H x W image."""
    return -(-height // 2), -(-width // 2)


def _blocks(tile_rows: int, per_row: int):
    """(first, stop) tile rows of consecutive blocks of about BLOCK_ELEMENTS / 16 elements."""
    step = max(1, BLOCK_ELEMENTS // (16 * per_row))
    return [(t, min(tile_rows, t + step)) for t in range(0, tile_rows, step)]


def _every_other(x: np.ndarray, axis: int, start: int, count: int) -> np.ndarray:
    """``count`` entries of ``x`` along ``axis``, from ``start`` with step 2 (a view)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + 2 * count, 2)
    return x[tuple(index)]


def _b_transpose(src: np.ndarray, dst: np.ndarray, axis: int) -> None:
    """dst[k] = sum_i B^T[k, i] src[2t + i] for each window t along ``axis`` (4 wide, stride 2),
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    x0, x1, x2, x3 = (_every_other(src, axis, start, dst.shape[axis + 1]) for start in range(4))
    np.subtract(x0, x2, out=dst[0])
    np.add(x1, x2, out=dst[1])
    np.subtract(x2, x1, out=dst[2])
    np.subtract(x1, x3, out=dst[3])


def _b_transpose_adjoint(d: np.ndarray, dst: np.ndarray, axis: int, scratch: np.ndarray) -> None:
    """Adjoint of :func:`_b_transpose`: ``dst`` (2T + 2 along ``axis``) = sum over windows t of B d[:, t].

    Entry 2t gets d0 of window t and d1 + d2 - d0 of window t - 1; entry 2t + 1 gets d1 - d2 + d3
    of window t and -d3 of window t - 1. ``scratch`` is shaped like d[0].
    """
    d0, d1, d2, d3 = d
    t = d0.shape[axis]
    np.copyto(_every_other(dst, axis, 0, t), d0)
    odd = _every_other(dst, axis, 1, t)
    np.subtract(d1, d2, out=odd)
    odd += d3
    last = [slice(None)] * dst.ndim
    last[axis] = slice(2 * t, 2 * t + 2)
    dst[tuple(last)] = 0
    np.add(d1, d2, out=scratch)
    scratch -= d0
    _every_other(dst, axis, 2, t)[...] += scratch
    _every_other(dst, axis, 3, t)[...] -= d3


def _a_transpose(m: np.ndarray, out0: np.ndarray, out1: np.ndarray) -> None:
    """(out0, out1) = A^T m over the first axis of m (4), A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    np.add(m[0], m[1], out=out0)
    np.add(out0, m[2], out=out0)
    np.subtract(m[1], m[2], out=out1)
    np.subtract(out1, m[3], out=out1)


def _a(d0: np.ndarray, d1: np.ndarray, dst: np.ndarray) -> None:
    """Adjoint of :func:`_a_transpose`: dst (4, ...) = A (d0, d1)."""
    np.copyto(dst[0], d0)
    np.add(d0, d1, out=dst[1])
    np.subtract(d0, d1, out=dst[2])
    np.negative(d1, out=dst[3])


def _padded(x: np.ndarray, work: Workspace, dtype) -> np.ndarray:
    """Spatial-major x (H, W, N, C) zero-padded to (2 TY + 2, 2 TX + 2, N, C), in ``work``'s scratch."""
    h, w, n, c = x.shape
    ty, tx = tiles(h, w)
    padded = work.get("padded", (2 * ty + 2, 2 * tx + 2, n, c), dtype)
    padded[0] = 0
    padded[h + 1:] = 0
    padded[1:h + 1, 0] = 0
    padded[1:h + 1, w + 1:] = 0
    padded[1:h + 1, 1:w + 1] = x
    return padded


def _transform_rows(padded: np.ndarray, t0: int, t1: int, vb: np.ndarray, work: Workspace) -> None:
    """V of tile rows t0:t1 (B^T d B of each 4 x 4 input tile) into ``vb`` (16, (t1 - t0) * TX * N, C)."""
    tx = (padded.shape[1] - 2) // 2
    n, c = padded.shape[2:]
    rows = work.get("rows", (4, t1 - t0, 2 * tx + 2, n, c), padded.dtype)
    _b_transpose(padded[2 * t0:2 * t1 + 2], rows, 0)
    _b_transpose(rows, vb.reshape(4, 4, t1 - t0, tx, n, c), 2)


def transform_input(x: np.ndarray, work: Workspace) -> np.ndarray:
    """The transformed input tiles V (16, TY * TX * N, C) of spatial-major x (H, W, N, C), in ``work``'s
    scratch (what :func:`backward` needs)."""
    h, w, n, c = x.shape
    ty, tx = tiles(h, w)
    v = work.get("v_input", (16, ty * tx * n, c), x.dtype)
    _transform_rows(_padded(x, work, x.dtype), 0, ty, v, work)
    return v


def forward(x: np.ndarray, u: np.ndarray, bias: np.ndarray, work: Workspace,
            v: np.ndarray | None = None, scratch_output: bool = False) -> np.ndarray:
    """'Same' 3x3 convolution of spatial-major x (H, W, N, C) -> y (H, W, N, F), a new array (a view
    of ``work``'s scratch with ``scratch_output``).

    ``u`` (16, C, F) from :func:`transform_weights`; ``bias`` (F,). ``v`` (16, TY * TX * N, C),
    if given, receives the transformed input tiles that :func:`backward` needs.
    """
    h, w, n, c = x.shape
    f = u.shape[2]
    ty, tx = tiles(h, w)
    dtype = np.result_type(x.dtype, u.dtype)
    padded = _padded(x, work, dtype)
    shape = (2 * ty, 2 * tx, n, f)
    y = work.get("y", shape, dtype) if scratch_output else np.empty(shape, dtype=dtype)
    y6 = y.reshape(ty, 2, tx, 2, n, f)
    per_row = tx * n * max(c, f)
    for t0, t1 in _blocks(ty, per_row):
        tb, rows_t = t1 - t0, (t1 - t0) * tx * n
        vb = work.get("v", (16, rows_t, c), dtype) if v is None else v[:, t0 * tx * n:t1 * tx * n]
        _transform_rows(padded, t0, t1, vb, work)
        m = work.get("m", (16, rows_t, f), dtype)
        for xi in range(16):
            np.matmul(vb[xi], u[xi], out=m[xi])
        m[BIAS_FREQUENCY] += bias
        m6 = m.reshape(4, 4, tb, tx, n, f)  # (b, a, ...)
        half = work.get("half", (2, 4, tb, tx, n, f), dtype)  # half[i][b]: output row i of the tile
        _a_transpose(m6.swapaxes(0, 1), half[0], half[1])
        for i in range(2):
            _a_transpose(half[i], y6[t0:t1, i, :, 0], y6[t0:t1, i, :, 1])
    if (2 * ty, 2 * tx) != (h, w):
        y = y[:h, :w] if scratch_output else np.ascontiguousarray(y[:h, :w])
    return y


def backward(dy: np.ndarray, u: np.ndarray, v: np.ndarray, du: np.ndarray, work: Workspace,
             input_grad: bool = True, scratch_output: bool = False) -> np.ndarray | None:
    """Gradients of :func:`forward` for spatial-major dy (H, W, N, F): dU (16, C, F) into ``du``,
    and dx (H, W, N, C) returned (a new array, a view of ``work``'s scratch with ``scratch_output``;
    None unless ``input_grad``). ``v`` is the forward's."""
    h, w, n, f = dy.shape
    c = u.shape[1]
    ty, tx = tiles(h, w)
    dtype = np.result_type(dy.dtype, u.dtype)
    if (2 * ty, 2 * tx) != (h, w):
        full = work.get("dy", (2 * ty, 2 * tx, n, f), dtype)
        full[...] = 0
        full[:h, :w] = dy
        dy = full
    dy6 = dy.reshape(ty, 2, tx, 2, n, f)
    padded = work.get("padded", (2 * ty + 2, 2 * tx + 2, n, c), dtype) if input_grad else None
    du_block = work.get("du", du.shape, du.dtype)
    per_row = tx * n * max(c, f)
    for t0, t1 in _blocks(ty, per_row):
        tb, rows_t = t1 - t0, (t1 - t0) * tx * n
        half = work.get("half", (2, 4, tb, tx, n, f), dtype)  # half[i][b]: columns transformed
        for i in range(2):
            _a(dy6[t0:t1, i, :, 0], dy6[t0:t1, i, :, 1], half[i])
        dm = work.get("m", (16, rows_t, f), dtype)
        _a(half[0], half[1], dm.reshape(4, 4, tb, tx, n, f).swapaxes(0, 1))
        vb = v[:, t0 * tx * n:t1 * tx * n]
        for xi in range(16):
            np.matmul(vb[xi].T, dm[xi], out=du[xi] if t0 == 0 else du_block[xi])
        if t0 > 0:
            du += du_block
        if not input_grad:
            continue
        dv = work.get("v", (16, rows_t, c), dtype)
        for xi in range(16):
            np.matmul(dm[xi], u[xi].T, out=dv[xi])
        rows = work.get("rows", (4, tb, 2 * tx + 2, n, c), dtype)
        _b_transpose_adjoint(dv.reshape(4, 4, tb, tx, n, c), rows, 2, work.get("scratch", (4, tb, tx, n, c), dtype))
        # Rows 2 t0 and 2 t0 + 1 already hold the previous block's share: keep it, add it back.
        carried = padded[2 * t0:2 * t0 + 2].copy() if t0 > 0 else None
        _b_transpose_adjoint(rows, padded[2 * t0:2 * t1 + 2], 0, work.get("scratch", rows.shape[1:], dtype))
        if carried is not None:
            padded[2 * t0:2 * t0 + 2] += carried
    if not input_grad:
        return None
    return padded[1:h + 1, 1:w + 1] if scratch_output else np.ascontiguousarray(padded[1:h + 1, 1:w + 1])
