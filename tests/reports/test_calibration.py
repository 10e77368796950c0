"""Reliability bins and ECE against hand-computed values; temperature scaling recovers a known temperature
and is kept only when it helps on the held-out data."""

import numpy as np
import pytest

from mnist_classification.reports import calibration
from mnist_classification.reports.calibration import (
    calibrate,
    fit_temperature,
    reliability,
    scaled_cross_entropy,
)


def test_reliability_and_ece_by_hand():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.3 (right, K=4) with 5 bins of width 0.2.
    probabilities = np.array([[0.9, 0.1, 0.0, 0.0], [0.05, 0.9, 0.05, 0.0],
                              [0.6, 0.4, 0.0, 0.0], [0.3, 0.25, 0.25, 0.2]])
    labels = np.array([0, 0, 0, 0])
    bins = reliability(probabilities, labels, bins=5)
    np.testing.assert_array_equal(bins.count, [0, 1, 1, 0, 2])
    np.testing.assert_allclose(bins.confidence, [0, 0.3, 0.6, 0, 0.9])
    np.testing.assert_allclose(bins.accuracy, [0, 1, 1, 0, 0.5])
    # (1/4)|1 - 0.3| + (1/4)|1 - 0.6| + (2/4)|0.5 - 0.9| = 0.175 + 0.1 + 0.2
    assert bins.expected_calibration_error == pytest.approx(0.475)


def test_bin_edges_are_closed_on_the_right():
    probabilities = np.array([[0.2, 0.8], [0.4, 0.6], [1.0, 0.0]])
    bins = reliability(probabilities, np.array([1, 1, 0]), bins=5)
    np.testing.assert_array_equal(bins.count, [0, 0, 1, 1, 1])  # 0.6 -> (0.4, 0.6], 0.8 -> (0.6, 0.8]


def test_perfect_confident_model_has_zero_ece_and_empty_input_is_zero():
    probabilities = np.eye(3)[[0, 1, 2, 1]]
    assert reliability(probabilities, np.array([0, 1, 2, 1])).expected_calibration_error == 0.0
    assert reliability(np.zeros((0, 3)), np.zeros(0, np.int64)).expected_calibration_error == 0.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="labels"):
        reliability(np.ones((3, 2)) / 2, np.array([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, np.int64))


def _sampled(true_temperature: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, 10) and labels drawn from softmax(logits / true_temperature): the calibrating T is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, 10))
    probabilities = np.exp(logits / true_temperature)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return logits, (probabilities.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_the_temperature_that_made_the_labels(true_temperature):
    logits, labels = _sampled(true_temperature, n=20000)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # logits up to a row constant
    fitted = fit_temperature(log_probabilities, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    best = grid[np.argmin([scaled_cross_entropy(log_probabilities, labels, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=0.02)


def test_scaled_cross_entropy_at_temperature_one_is_the_plain_cross_entropy():
    logits = np.random.default_rng(1).normal(0, 2, (50, 10))
    labels = np.arange(50) % 10
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probabilities[np.arange(50), labels]))
    assert scaled_cross_entropy(np.log(probabilities), labels, 1.0) == pytest.approx(expected)
    # T = 2 by hand: softmax of half the logits.
    half = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    assert scaled_cross_entropy(logits, labels, 2.0) == pytest.approx(-np.mean(np.log(half[np.arange(50), labels])))


def test_calibrate_keeps_the_temperature_of_an_overconfident_model():
    logits, labels = _sampled(2.5)
    scaling = calibrate(logits, labels)
    assert scaling.temperature == scaling.fitted == pytest.approx(2.5, rel=0.03)
    assert scaling.nll_after < scaling.nll_before and scaling.ece_after < scaling.ece_before
    assert scaling.nll_after == pytest.approx(scaled_cross_entropy(logits, labels, scaling.fitted))
    assert calibrate(logits, labels) == scaling  # deterministic
    assert scaling.summary() == {"temperature": scaling.temperature, "fitted_temperature": scaling.fitted,
                                 "nll_before": round(scaling.nll_before, 6), "nll_after": round(scaling.nll_after, 6),
                                 "ece_before": round(scaling.ece_before, 6), "ece_after": round(scaling.ece_after, 6)}


@pytest.mark.parametrize("true_temperature, seed", [(0.4, 1), (1.0, 2), (1.0, 3), (2.5, 4), (8.0, 5)])
def test_the_kept_temperature_never_worsens_the_cross_entropy(true_temperature, seed):
    logits, labels = _sampled(true_temperature, n=500, seed=seed)
    scaling = calibrate(logits, labels)
    assert scaling.temperature in (1.0, scaling.fitted)
    assert scaled_cross_entropy(logits, labels, scaling.temperature) <= scaling.nll_before
    if scaling.temperature != 1.0:
        assert scaling.ece_after <= scaling.ece_before + calibration.ECE_TOLERANCE


def test_a_temperature_that_worsens_the_ece_is_not_kept(monkeypatch):
    """With no tolerance left, any ECE is too high: T = 1 is kept though the fit lowers the cross-entropy."""
    logits, labels = _sampled(2.5)
    monkeypatch.setattr(calibration, "ECE_TOLERANCE", -1.0)
    scaling = calibrate(logits, labels)
    assert scaling.nll_after < scaling.nll_before
    assert scaling.temperature == 1.0 and scaling.fitted == pytest.approx(2.5, rel=0.05)
