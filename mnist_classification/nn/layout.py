"""Memory layouts of (N, C, H, W) feature maps: the layers pass (N, C, H, W) views of either layout.

* channel-major, (C, N, H, W) memory: what the im2col convolution's matrix products produce;
* channels-last, (N, H, W, C) memory: what the blocked and Winograd convolutions produce (every
  image one contiguous block, every pixel's channels contiguous).

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


def is_channels_last(x: np.ndarray) -> bool:
    """Whether (N, C, H, W) ``x`` is a view of C-contiguous (N, H, W, C) memory."""
    return x.transpose(0, 2, 3, 1).flags.c_contiguous


def channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> its (N, H, W, C) transpose, C-contiguous: a view when possible, else a copy."""
    xl = x.transpose(0, 2, 3, 1)
    return xl if xl.flags.c_contiguous else np.ascontiguousarray(xl)


def from_channels_last(a: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> the (N, C, H, W) view of the same memory."""
    return a.transpose(0, 3, 1, 2)
