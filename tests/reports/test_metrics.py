"""Confusion matrix and classification report against hand-computed values."""

import math
import warnings

import numpy as np
import pytest

from mnist_classification.reports.metrics import (
    classification_report,
    confusion_matrix,
    cross_entropy,
)

# Three classes; class "c" is never predicted.
ACTUAL = np.array([0, 0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 0, 1, 1, 0, 1, 0])
NAMES = ["a", "b", "c"]


def one_hot_probabilities(predicted, k, confidence=0.8):
    probs = np.full((len(predicted), k), (1 - confidence) / (k - 1), dtype=np.float32)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_confusion_matrix_hand_example():
    matrix = confusion_matrix(ACTUAL, PREDICTED, 3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [1, 1, 0], [1, 1, 0]])


def test_confusion_matrix_matches_loop_on_random_labels():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 1000).astype(np.uint8)
    predicted = rng.integers(0, 10, 1000)
    expected = np.zeros((10, 10), dtype=np.int64)
    for a, p in zip(actual, predicted):
        expected[a, p] += 1
    np.testing.assert_array_equal(confusion_matrix(actual, predicted, 10), expected)


def test_confusion_matrix_keeps_shape_for_absent_classes_and_empty_input():
    np.testing.assert_array_equal(confusion_matrix([1], [1], 4), np.diag([0, 1, 0, 0]))
    assert confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 3).shape == (3, 3)


@pytest.mark.parametrize("actual, predicted", [([0, 3], [0, 1]), ([0, -1], [0, 1]), ([0, 1], [0]),
                                               ([0.0, 1.0], [0, 1])])
def test_confusion_matrix_rejects_bad_labels(actual, predicted):
    with pytest.raises(ValueError):
        confusion_matrix(np.array(actual), np.array(predicted), 3)


def test_report_hand_example_including_never_predicted_class():
    probs = one_hot_probabilities(PREDICTED, 3)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        report = classification_report(ACTUAL, PREDICTED, probs, NAMES)
    assert report["samples"] == 7
    assert report["accuracy"] == pytest.approx(3 / 7, abs=1e-6)
    a, b, c = (report["per_class"][name] for name in NAMES)
    assert a == pytest.approx({"accuracy": 2 / 3, "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7,
                               "support": 3}, abs=1e-6)
    assert b == pytest.approx({"accuracy": 0.5, "precision": 1 / 3, "recall": 0.5, "f1": 0.4,
                               "support": 2}, abs=1e-6)
    assert c == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert report["macro_precision"] == pytest.approx((0.5 + 1 / 3) / 3, abs=1e-6)
    assert report["macro_recall"] == pytest.approx((2 / 3 + 0.5) / 3, abs=1e-6)
    assert report["macro_f1"] == pytest.approx((4 / 7 + 0.4) / 3, abs=1e-6)
    # true-class probability is 0.1 for the 4 errors and 0.8 for the 3 hits
    assert report["loss"] == pytest.approx((4 * -math.log(0.1) + 3 * -math.log(0.8)) / 7, abs=1e-5)


def test_report_floats_are_rounded_and_json_types():
    report = classification_report(ACTUAL, PREDICTED, one_hot_probabilities(PREDICTED, 3), NAMES)
    floats = [report[k] for k in ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1")]
    floats += [v for entry in report["per_class"].values() for k, v in entry.items() if k != "support"]
    for value in floats:
        assert type(value) is float and round(value, 6) == value
    assert type(report["samples"]) is int
    assert all(type(entry["support"]) is int for entry in report["per_class"].values())
    assert report["per_class"]["a"]["precision"] == 0.5
    assert report["macro_f1"] == 0.32381  # (4/7 + 0.4) / 3 = 0.3238095...


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3, dtype=np.float32)[labels]
    report = classification_report(labels, labels, probs, NAMES)
    assert report["accuracy"] == report["macro_f1"] == 1.0
    assert report["loss"] == 0.0
    assert report["per_class"]["c"]["support"] == 1


def test_cross_entropy_known_values_and_clipping():
    probs = np.array([[0.5, 0.5], [0.75, 0.25]], dtype=np.float32)
    assert cross_entropy([0, 1], probs) == pytest.approx(1.5 * math.log(2))  # (ln 2 + ln 4) / 2
    # p(true) = 0 is clipped to 1e-12 instead of giving inf
    assert cross_entropy([1], np.array([[1.0, 0.0]])) == pytest.approx(-math.log(1e-12))


def test_report_rejects_mismatched_probabilities_and_duplicate_names():
    with pytest.raises(ValueError):
        classification_report(ACTUAL, PREDICTED, np.zeros((7, 2)), NAMES)
    with pytest.raises(ValueError):
        classification_report(ACTUAL, PREDICTED, np.zeros((7, 3)), ["a", "a", "c"])
