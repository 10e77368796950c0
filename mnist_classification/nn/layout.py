"""Memory layouts of (N, C, H, W) feature maps: the layers pass (N, C, H, W) views of either layout.

* channel-major, (C, N, H, W) memory: what the im2col convolution's matrix products produce;
* spatial-major, (H, W, N, C) memory: what the Winograd convolution works in (every pixel one
  contiguous (N, C) block).

Elementwise layers keep their input's layout, batch norm and pooling work in either, and each
convolution reads its own without a copy; any other layout costs one transposing copy.
"""

from __future__ import annotations

import numpy as np


def channel_major(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> its (C, N, H, W) transpose, C-contiguous: a view when possible, else a copy."""
    xt = x.transpose(1, 0, 2, 3)
    return xt if xt.flags.c_contiguous else np.ascontiguousarray(xt)


def from_channel_major(a: np.ndarray) -> np.ndarray:
    """(C, N, H, W) -> the (N, C, H, W) view of the same memory."""
    return a.transpose(1, 0, 2, 3)


def is_spatial_major(x: np.ndarray) -> bool:
    """Whether (N, C, H, W) ``x`` is a view of C-contiguous (H, W, N, C) memory."""
    return x.transpose(2, 3, 0, 1).flags.c_contiguous


def spatial_major(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> its (H, W, N, C) transpose, C-contiguous: a view when possible, else a copy."""
    xs = x.transpose(2, 3, 0, 1)
    return xs if xs.flags.c_contiguous else np.ascontiguousarray(xs)


def from_spatial_major(a: np.ndarray) -> np.ndarray:
    """(H, W, N, C) -> the (N, C, H, W) view of the same memory."""
    return a.transpose(2, 3, 0, 1)
