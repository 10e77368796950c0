"""The numerical environment a training run used: what decides whether two runs give the same bytes.

NumPy's version, its BLAS library (from NumPy's build configuration) and, for
OpenBLAS, the kernel it picked for this CPU at run time and its thread count
(asked of the loaded library itself through ctypes, as threadpoolctl would),
the CPU model and the CPUs this process may use. Float32 matrix products
round differently from one BLAS kernel to another, so a model is byte-identical
only where all of these match.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import numpy as np

# OpenBLAS's query functions, under the names its builds export (NumPy's wheels use scipy_openblas ... 64_).
_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "")


def numerical_environment() -> dict:
    """A JSON-ready dict: numpy, blas (name, version, kernel, threads), cpu, cpus, machine."""
    blas = _build_blas()
    library = _loaded_openblas()
    if library is not None:
        blas["kernel"] = _call(library, "get_corename", ctypes.c_char_p)
        blas["threads"] = _call(library, "get_num_threads", ctypes.c_int)
    return {
        "numpy": np.__version__,
        "blas": blas,
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
    }


def _build_blas() -> dict:
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (KeyError, TypeError, ValueError):
        return {"name": "unknown"}
    return {"name": str(config.get("name", "unknown")), "version": str(config.get("version", "unknown"))}


def _loaded_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS shared library NumPy has loaded into this process, found in /proc/self/maps."""
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


def _call(library: ctypes.CDLL, name: str, restype):
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            function = getattr(library, f"{prefix}_{name}{suffix}", None)
            if function is not None:
                function.restype, function.argtypes = restype, []
                value = function()
                return value.decode() if isinstance(value, bytes) else value
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
