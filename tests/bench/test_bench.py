"""The throughput benchmark counts the right matrix products and runs end to end (timings unchecked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_train  # noqa: E402

from mnist_classification.infra.params import validate  # noqa: E402
from mnist_classification.nn.network import build_network  # noqa: E402


def _network(config: dict, conv: str = "auto"):
    p = validate({"train": {**config, "batch_size": 128, "cnn": {"conv": conv}}})["train"]
    return build_network(p, (28, 28), bench_train.CLASSES, 0.0, 1.0)


def test_mlp_products_by_hand():
    shapes = bench_train.matmul_shapes(_network(bench_train.CONFIGS["mlp800"]), 128)
    # layer 1: forward and weight grad only (its input grad is never needed); layer 2: all three.
    assert shapes == [(128, 784, 800), (784, 128, 800), (128, 800, 10), (800, 128, 10), (128, 10, 800)]


def test_cnn_winograd_products_by_hand():
    shapes = bench_train.matmul_shapes(_network(bench_train.CONFIGS["cnn"], "winograd"), 2)
    t1, t2 = 2 * 14 * 14, 2 * 7 * 7  # 2 x 2 tiles of the batch before and after the first pool
    assert shapes[:2 + 16 * 9] == (
        [(32, 9, 2 * 28 * 28), (9, 2 * 28 * 28, 32)]                # 1 -> 32: im2col blocks, no dX
        + [(t1, 32, 32)] * 16 + [(32, t1, 32)] * 16 + [(t1, 32, 32)] * 16               # 32 -> 32
        + [(t2, 32, 64)] * 16 + [(32, t2, 64)] * 16 + [(t2, 64, 32)] * 16               # 32 -> 64
        + [(t2, 64, 64)] * 16 + [(64, t2, 64)] * 16 + [(t2, 64, 64)] * 16)              # 64 -> 64


@pytest.mark.parametrize("conv", ["im2col", "auto"])  # blocked im2col: the same products, block by block
def test_cnn_im2col_products_by_hand(conv):
    shapes = bench_train.matmul_shapes(_network(bench_train.CONFIGS["cnn"], conv), 2)
    p1, p2 = 2 * 28 * 28, 2 * 14 * 14  # pixels of the batch before and after the first pool
    assert shapes[:11] == [
        (32, 9, p1), (9, p1, 32),                          # conv 1 -> 32: no input grad
        (32, 288, p1), (288, p1, 32), (32, 288, p1),       # conv 32 -> 32: dX by the rotated kernel
        (64, 288, p2), (288, p2, 64), (288, 64, p2),       # conv 32 -> 64: dX by col2im
        (64, 576, p2), (576, p2, 64), (64, 576, p2),       # conv 64 -> 64: dX by the rotated kernel
    ]
    assert shapes[11:] == [(2, 3136, 128), (3136, 2, 128), (2, 128, 3136),
                           (2, 128, 10), (128, 2, 10), (2, 10, 128)]


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
def test_loop_uses_the_chosen_optimiser(monkeypatch, optimizer):
    real, made = bench_train.make_optimizer, []
    monkeypatch.setattr(bench_train, "make_optimizer", lambda *args: made.append(real(*args)) or made[-1])
    seconds, network = bench_train.time_training(bench_train.CONFIGS["mlp256"], 256, 128, optimizer)
    assert seconds > 0 and network.count_parameters() == 784 * 256 + 256 + 256 * 10 + 10
    assert [type(o).__name__ for o in made] == [{"adam": "Adam", "momentum": "Momentum", "sgd": "SGD"}[optimizer]]
    assert made[0].steps == 2  # 256 samples in batches of 128: the loop updated with it


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_command_reports_every_figure(optimizer):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--only", "mlp256", "--repeats", "1",
         "--samples", "256", "--optimizer", optimizer, "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)["results"]["mlp256"]
    assert result["optimizer"] == optimizer and result["samples"] == 256 and result["batch"] == 128
    assert result["parameters"] == 784 * 256 + 256 + 256 * 10 + 10
    steps = 256 // 128
    flops = steps * 2 * sum(m * k * n for m, k, n in [(128, 784, 256), (784, 128, 256), (128, 256, 10),
                                                       (256, 128, 10), (128, 10, 256)])
    assert result["loop_gflops"] == pytest.approx(flops / result["median_epoch_seconds"] / 1e9, rel=0.01)
    assert result["samples_per_second"] == pytest.approx(256 / result["median_epoch_seconds"], rel=0.01)
