"""The numerical environment recorded with each training run."""

import json

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
