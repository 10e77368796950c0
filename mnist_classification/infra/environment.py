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

from mnist_classification.infra.blas import loaded_openblas, query


def numerical_environment() -> dict:
    """A JSON-ready dict: numpy, blas (name, version, kernel, threads), cpu, cpus, machine."""
    blas = _build_blas()
    if loaded_openblas() is not None:
        blas["kernel"] = query("get_corename", ctypes.c_char_p)
        blas["threads"] = query("get_num_threads", ctypes.c_int)
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
