"""The OpenBLAS library NumPy loaded, asked and steered through ctypes (as threadpoolctl would).

NumPy does not expose its BLAS's thread count; OpenBLAS does, under the names its
builds export (NumPy's wheels prefix them with ``scipy_openblas`` and suffix ``64_``).
Without OpenBLAS (another BLAS, or no /proc) the queries answer "unknown" and
:func:`single_threaded_blas` changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from pathlib import Path

_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "")

_THREADS_LOCK = threading.Lock()
_single_threaded = {"depth": 0, "restore": 1}  # open single_threaded_blas blocks; threads to restore


@functools.cache
def loaded_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS shared library NumPy has loaded into this process, found in /proc/self/maps."""
    import numpy  # noqa: F401  (loads the library)

    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in lines if "openblas" in line.rsplit("/", 1)[-1].lower()})
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _function(name: str):
    library = loaded_openblas()
    if library is None:
        return None
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            function = getattr(library, f"{prefix}_{name}{suffix}", None)
            if function is not None:
                return function
    return None


def query(name: str, restype):
    """OpenBLAS's ``NAME()`` (for example ``get_corename``, ``get_num_threads``), or "unknown"."""
    function = _function(name)
    if function is None:
        return "unknown"
    function.restype, function.argtypes = restype, []
    value = function()
    return value.decode() if isinstance(value, bytes) else value


def current_blas_threads() -> int:
    """How many threads the BLAS uses for a call right now (the CPUs this process may use if unknown)."""
    threads = query("get_num_threads", ctypes.c_int)
    if isinstance(threads, int) and threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def blas_threads() -> int:
    """How many threads the BLAS is set to use outside :func:`single_threaded_blas` blocks
    (OPENBLAS_NUM_THREADS and the CPU affinity decide)."""
    with _THREADS_LOCK:
        if _single_threaded["depth"]:
            return _single_threaded["restore"]
    return current_blas_threads()


@contextlib.contextmanager
def single_threaded_blas():
    """Within the block, each BLAS call runs on the calling thread alone (re-entrant; thread-safe),
    so that several threads can each run their own products on their own core."""
    setter = _function("set_num_threads")
    if setter is None:
        yield
        return
    setter.restype, setter.argtypes = None, [ctypes.c_int]
    with _THREADS_LOCK:
        if _single_threaded["depth"] == 0:
            _single_threaded["restore"] = current_blas_threads()
            setter(1)
        _single_threaded["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _single_threaded["depth"] -= 1
            if _single_threaded["depth"] == 0:
                setter(_single_threaded["restore"])
