"""Stratified split, normalisation statistics, standardisation, prepared files and the preprocess stage."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_classification.data.datasets import FILE_NAMES
from mnist_classification.data.idx import encode_idx
from mnist_classification.data.preprocessing import (
    load_prepared,
    normalisation_stats,
    standardise,
    standardised_black,
    stratified_split,
)
from mnist_classification.infra.atomic import save_npz
from mnist_classification.infra.errors import PipelineError

REPO = Path(__file__).resolve().parents[2]


def _labels(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    probs = np.arange(1, 11) / 55.0  # unbalanced classes
    return rng.choice(10, size=n, p=probs).astype(np.uint8)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_is_stratified_disjoint_and_covering(fraction):
    labels = _labels()
    train, val = stratified_split(labels, fraction, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
    counts = np.bincount(labels, minlength=10)
    val_counts = np.bincount(labels[val], minlength=10)
    assert np.all(np.abs(val_counts - counts * fraction) <= 1)


def test_split_is_deterministic_by_seed():
    labels = _labels()
    a = stratified_split(labels, 0.2, seed=5)
    b = stratified_split(labels, 0.2, seed=5)
    c = stratified_split(labels, 0.2, seed=6)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_rejects_fractions_leaving_a_split_empty():
    with pytest.raises(PipelineError, match="val_fraction"):
        stratified_split(_labels(50), 0.001, seed=0)
    with pytest.raises(PipelineError, match="strictly between 0 and 1"):
        stratified_split(_labels(50), 1.0, seed=0)


def test_stats_match_numpy_and_use_only_what_they_are_given():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    images[40:] = 255  # a "validation" part that would shift the statistics
    train_idx, _ = np.arange(40), np.arange(40, 50)
    mean, std = normalisation_stats(images[train_idx])
    scaled = images[train_idx].astype(np.float64) / 255
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert std == pytest.approx(scaled.std(), rel=1e-12)
    assert mean != pytest.approx(images.astype(np.float64).mean() / 255, rel=1e-3)


def test_stats_refuse_constant_images():
    with pytest.raises(PipelineError, match="std 0"):
        normalisation_stats(np.full((2, 28, 28), 7, np.uint8))


def test_standardise_dtype_shape_and_values():
    images = np.array([[[0, 255], [51, 128]]], np.uint8)
    out = standardise(images, 0.1307, 0.3081)
    assert out.dtype == np.float32 and out.shape == images.shape
    expected = ((images.astype(np.float32) / np.float32(255)) - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(TypeError):
        standardise(images.astype(np.float32), 0.0, 1.0)


def test_load_prepared_round_trip_and_errors(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    labels = np.array([1, 2, 3], np.uint8)
    save_npz(tmp_path / "ok.npz", {"images": images, "labels": labels}, compress=True)
    x, y = load_prepared(tmp_path / "ok.npz")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(PipelineError, match=r"missing\.npz not found.*preprocess"):
        load_prepared(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PipelineError, match=r"junk\.npz is truncated or not a readable \.npz"):
        load_prepared(tmp_path / "junk.npz")
    save_npz(tmp_path / "nolabels.npz", {"images": images})
    with pytest.raises(PipelineError, match="lacks array.*labels"):
        load_prepared(tmp_path / "nolabels.npz")
    save_npz(tmp_path / "badlabels.npz", {"images": images, "labels": np.array([1, 2, 12], np.uint8)})
    with pytest.raises(PipelineError, match="outside 0..9"):
        load_prepared(tmp_path / "badlabels.npz")


def _write_raw(root: Path, n_train=300, n_test=40):
    rng = np.random.default_rng(2)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), _labels(n_train, seed=4),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), _labels(n_test, seed=5)]
    for name, array in zip(FILE_NAMES, arrays):
        (raw / f"{name}.gz").write_bytes(gzip.compress(encode_idx(array), mtime=0))
    (raw / "dataset.json").write_text(json.dumps({"name": "mnist", "classes": [str(d) for d in range(10)]}))
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return arrays


def _run_preprocess(cwd):
    return subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_preprocess_stage_outputs_are_complete_and_deterministic(tmp_path):
    train_x, train_y, test_x, test_y = _write_raw(tmp_path)
    result = _run_preprocess(tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "prepared"
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["meta.json", "test.npz", "train.npz", "val.npz"]
    meta = json.loads(first["meta.json"])
    assert meta["counts"]["train"] + meta["counts"]["val"] == 300 and meta["counts"]["test"] == 40
    x_tr, y_tr = load_prepared(out / "train.npz")
    x_va, y_va = load_prepared(out / "val.npz")
    x_te, y_te = load_prepared(out / "test.npz")
    np.testing.assert_array_equal(x_te, test_x)
    np.testing.assert_array_equal(y_te, test_y)
    assert meta["mean"] == pytest.approx(x_tr.astype(np.float64).mean() / 255, rel=1e-12)
    assert np.bincount(np.concatenate([y_tr, y_va]), minlength=10).tolist() == \
        np.bincount(train_y, minlength=10).tolist()
    assert _run_preprocess(tmp_path).returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_preprocess_stage_errors_cleanly_without_raw_data(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = _run_preprocess(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("preprocess: error: data/raw/dataset.json not found")
    assert "Traceback" not in result.stderr


def test_standardised_black_is_a_standardised_zero_pixel():
    assert standardised_black(0.13, 0.31) == pytest.approx(-0.13 / 0.31, rel=1e-6)
    assert standardised_black(0.13, 0.31) == standardise(np.zeros((1, 1), np.uint8), 0.13, 0.31)[0, 0]
