"""The numerical environment recorded with each training run."""

import json
import os
import subprocess
import sys

import numpy as np

from mnist_classification.infra.environment import numerical_environment


def test_environment_names_numpy_blas_kernel_threads_and_cpu():
    env = numerical_environment()
    json.dumps(env)  # written as it is into metrics/train.json
    assert env["numpy"] == np.__version__
    assert env["cpus"] >= 1 and env["cpu"] and env["machine"]
    blas = env["blas"]
    assert blas["name"] == np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if "openblas" in blas["name"]:
        # asked of the loaded library: the kernel OpenBLAS picked for this CPU (or OPENBLAS_CORETYPE)
        assert blas["kernel"] not in ("", "unknown") and blas["threads"] >= 1


def test_threads_are_read_from_the_loaded_library():
    """A run started with one BLAS thread records one: the figure comes from the library, not the build."""
    if "openblas" not in numerical_environment()["blas"]["name"]:
        return
    code = "import json; from mnist_classification.infra.environment import numerical_environment as e; " \
           "print(json.dumps(e()))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert json.loads(result.stdout)["blas"]["threads"] == 1
