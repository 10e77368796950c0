"""The evaluate stage end to end, run as DVC runs it: a subprocess in the project root."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.infra.atomic import save_npz, write_csv
from mnist_classification.infra.params import load_params
from mnist_classification.nn.network import build_network, load_network
from mnist_classification.reports.calibration import reliability

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "stages" / "evaluate.py"
CLASSES = [str(i) for i in range(10)]
PLOTS = "dvclive/evaluate/plots"
OUTPUTS = ["metrics/eval.json", f"{PLOTS}/sklearn/confusion_matrix.json", f"{PLOTS}/images/loss_curve.png",
           f"{PLOTS}/images/accuracy_plot.png", f"{PLOTS}/images/confusion_matrix.png",
           f"{PLOTS}/images/misclassified.png", f"{PLOTS}/images/reliability.png",
           f"{PLOTS}/custom/reliability.json"]
N_TEST = 120
TEMPERATURE = 0.5


def make_project(root: Path) -> Path:
    """A project laid out like the real one, with a tiny untrained model (temperature 0.5) and fake test set."""
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    train = dict(load_params(root / "params.yaml")["train"], model="mlp", hidden=[16])
    network = build_network(train, (28, 28), CLASSES, 0.13, 0.31)
    network.temperature = TEMPERATURE
    network.save(root / "models" / "model.npz")
    rng = np.random.default_rng(0)
    save_npz(root / "data" / "prepared" / "test.npz", {
        "images": rng.integers(0, 256, (N_TEST, 28, 28)).astype(np.uint8),
        "labels": rng.integers(0, 10, N_TEST).astype(np.uint8),
    })
    write_csv(root / "plots" / "history.csv",
              ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"],
              [[e, 1 / e, 1 - 0.5 / e, 1.1 / e, 0.95 - 0.5 / e, 0.001] for e in range(1, 4)])
    return root


def run_stage(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STAGE)], check=False, cwd=root, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("project"))
    result = run_stage(root)
    return root, result


def test_stage_writes_every_output(evaluated):
    root, result = evaluated
    assert result.returncode == 0, result.stderr
    for name in OUTPUTS:
        assert (root / name).is_file(), name
    for name in OUTPUTS:
        if name.endswith(".png"):
            assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in root.rglob(".*.tmp")]
    assert leftovers == []


def test_eval_json(evaluated):
    root, _ = evaluated
    report = json.loads((root / "metrics" / "eval.json").read_text())
    assert 0 <= report["accuracy"] <= 1
    assert report["loss"] > 0
    assert report["samples"] == N_TEST
    assert set(report["per_class"]) == set(CLASSES)
    assert sum(entry["support"] for entry in report["per_class"].values()) == N_TEST


def test_ece_agrees_with_the_reliability_bins(evaluated):
    root, _ = evaluated
    report = json.loads((root / "metrics" / "eval.json").read_text())
    bins = json.loads((root / PLOTS / "custom" / "reliability.json").read_text())
    assert sum(row["images"] for row in bins) == N_TEST
    assert all(0 <= row["confidence"] <= 1 and 0 <= row["accuracy"] <= 1 for row in bins)
    ece = sum(row["images"] / N_TEST * abs(row["accuracy"] - row["confidence"]) for row in bins)
    assert report["ece"] == pytest.approx(ece, abs=1e-5)


def test_calibrated_and_uncalibrated_figures(evaluated):
    """ece and loss are those of softmax(logits / T), the *_uncalibrated ones of softmax(logits);
    the predictions (accuracy) are the logits' argmax either way."""
    root, _ = evaluated
    report = json.loads((root / "metrics" / "eval.json").read_text())
    network = load_network(root / "models" / "model.npz")
    images, labels = load_prepared(root / "data" / "prepared" / "test.npz")
    logits = network.predict_logits(standardise(images, network.mean, network.std)).astype(np.float64)
    labels = labels.astype(np.int64)
    assert report["temperature"] == TEMPERATURE
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels), abs=1e-6)
    for key, temperature in (("", TEMPERATURE), ("_uncalibrated", 1.0)):
        probabilities = np.exp(logits / temperature) / np.exp(logits / temperature).sum(axis=1, keepdims=True)
        assert report[f"ece{key}"] == pytest.approx(
            reliability(probabilities, labels).expected_calibration_error, abs=1e-5)
        loss = -np.mean(np.log(probabilities[np.arange(N_TEST), labels]))
        assert report[f"loss{key}"] == pytest.approx(loss, abs=1e-5)
    assert report["ece"] != report["ece_uncalibrated"]


def test_confusion_data_has_class_names(evaluated):
    root, _ = evaluated
    records = json.loads((root / PLOTS / "sklearn" / "confusion_matrix.json").read_text())
    rows = [(record["actual"], record["predicted"]) for record in records]
    assert len(rows) == N_TEST
    assert all(a in CLASSES and p in CLASSES for a, p in rows)
    report = json.loads((root / "metrics" / "eval.json").read_text())
    correct = sum(a == p for a, p in rows)
    assert report["accuracy"] == pytest.approx(correct / N_TEST, abs=1e-6)


@pytest.mark.parametrize("missing", ["models/model.npz", "data/prepared/test.npz", "plots/history.csv"])
def test_missing_input_fails_cleanly_and_writes_nothing(tmp_path, missing):
    root = make_project(tmp_path)
    (root / missing).unlink()
    result = run_stage(root)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("evaluate: error:") and missing in lines[0]
    assert "Traceback" not in result.stderr
    for name in OUTPUTS:
        assert not (root / name).exists(), name


def test_bad_params_fail_before_anything_else(tmp_path):
    root = make_project(tmp_path)
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("gallery_size: 36",
                                                                                "gallery_size: 0"))
    result = run_stage(root)
    assert result.returncode == 2
    assert "evaluate.gallery_size" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "metrics" / "eval.json").exists()
