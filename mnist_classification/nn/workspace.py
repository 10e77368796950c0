"""Scratch memory reused from call to call."""

from __future__ import annotations

import numpy as np


class Workspace:
    """Named flat scratch arrays, reused while their size and dtype fit (grown when they do not).

    ``get`` returns a view of the first prod(shape) elements; the caller must be done with the
    previous view of the same name before asking again.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = int(np.prod(shape))
        array = self._arrays.get(name)
        if array is None or array.dtype != dtype or array.size < size:
            array = np.empty(size, dtype=dtype)
            self._arrays[name] = array
        return array[:size].reshape(shape)

    def ones(self, length: int, dtype) -> np.ndarray:
        """A vector of ``length`` ones (for sums as matrix products); never write into it."""
        array = self._arrays.get("ones")
        if array is None or array.dtype != dtype or array.size < length:
            array = self._arrays["ones"] = np.ones(length, dtype=dtype)
        return array[:length]
