"""The PyTorch comparison trains the same network on the same batches (timings unchecked).

Skipped when PyTorch is not installed (it is only in the ``bench`` extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_torch  # noqa: E402


@pytest.mark.parametrize("name", sorted(bench_torch.CONFIGS))
def test_torch_network_is_the_same_network(name):
    network = bench_torch.project_network(name)
    model = bench_torch.torch_network(network)
    assert sum(p.numel() for p in model.parameters()) == network.count_parameters()
    images = np.random.default_rng(0).standard_normal((5, 28, 28), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(network.forward(images, training=False), theirs, rtol=1e-4, atol=1e-5)


def test_one_training_step_changes_both_alike():
    # Same weights, same batch, no dropout: one Adam step leaves the two networks' outputs equal.
    network = bench_torch.project_network("mlp800")
    model = bench_torch.torch_network(network)
    (images, labels), = bench_torch.batches(1, 16)
    bench_torch.project_stepper(network, 1e-3)(images, labels)
    bench_torch.torch_stepper(model, 1e-3)(torch.from_numpy(images), torch.from_numpy(labels))
    probe = np.random.default_rng(1).standard_normal((4, 28, 28), dtype=np.float32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(network.forward(probe), theirs, rtol=1e-4, atol=1e-4)


def test_summary_by_hand():
    r = bench_torch.summary([2.0, 1.0, 4.0], [1.0, 1.0, 2.0], samples=100)
    assert r["project_samples_per_second"] == 50.0 and r["torch_samples_per_second"] == 100.0
    assert r["ratio_median"] == 0.5 and r["ratio_range"] == [0.5, 1.0] and r["rounds"] == 3


def test_command_reports_every_figure():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_torch.py"), "--rounds", "1", "--steps", "1", "--warmup", "1",
         "--batch", "4", "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(out.stdout)
    assert set(report["results"]) == {"cnn", "mlp800"}
    for r in report["results"].values():
        assert r["project_samples_per_second"] > 0 and r["torch_samples_per_second"] > 0 and r["rounds"] == 1
    assert report["machine"]["torch"].startswith("2.13")
