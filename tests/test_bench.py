"""The throughput benchmark counts the right matrix products and runs end to end (timings unchecked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_train  # noqa: E402
from mnist_classification.network import build_network  # noqa: E402
from mnist_classification.params import validate  # noqa: E402


def _network(config: dict):
    p = validate({"train": {**config, "batch_size": 128}})["train"]
    return build_network(p, (28, 28), bench_train.CLASSES, 0.0, 1.0)


def test_mlp_products_by_hand():
    shapes = bench_train.matmul_shapes(_network(bench_train.CONFIGS["mlp800"]), 128)
    # layer 1: forward and weight grad only (its input grad is never needed); layer 2: all three.
    assert shapes == [(128, 784, 800), (784, 128, 800), (128, 800, 10), (800, 128, 10), (128, 10, 800)]


def test_cnn_first_conv_skips_its_input_grad():
    shapes = bench_train.matmul_shapes(_network(bench_train.CONFIGS["cnn"]), 2)
    first_conv = shapes[:2]
    assert first_conv == [(32, 9, 2 * 28 * 28), (32, 2 * 28 * 28, 9)]
    assert (1, 32 * 9, 2 * 28 * 28) not in shapes


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_command_reports_every_figure(optimizer):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--only", "mlp256", "--repeats", "1",
         "--samples", "256", "--optimizer", optimizer, "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)["results"]["mlp256"]
    assert result["optimizer"] == optimizer and result["samples"] == 256 and result["batch"] == 128
    assert result["parameters"] == 784 * 256 + 256 + 256 * 10 + 10
    assert result["samples_per_second"] > 0 and 0 < result["fraction_of_peak"]
    low, high = result["fraction_range"]
    assert low <= result["fraction_of_peak"] <= high
