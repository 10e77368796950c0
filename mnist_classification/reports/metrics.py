"""Classification metrics for the evaluate stage: confusion matrix and a JSON-ready report.

Everything is vectorised NumPy. Floats in the report are rounded to
:data:`DECIMALS` places so that ``metrics/eval.json`` is stable across
platforms and BLAS builds and diffs cleanly in ``dvc metrics diff``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DECIMALS = 6

# Probabilities are clipped to [EPSILON, 1] before the log: a confidently wrong
# prediction (p = 0 in float32) costs -log(1e-12) ~ 27.6 nats instead of inf.
EPSILON = 1e-12


def _labels(values, name: str, num_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{name} holds class indices outside 0..{num_classes - 1}")
    return array


def confusion_matrix(actual, predicted, num_classes: int) -> np.ndarray:
    """Counts (K, K) int64: row = actual class, column = predicted class."""
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    actual = _labels(actual, "actual", num_classes)
    predicted = _labels(predicted, "predicted", num_classes)
    if actual.shape != predicted.shape:
        raise ValueError(f"actual has {actual.size} labels but predicted has {predicted.size}")
    flat = np.bincount(actual * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, 0 where the denominator is 0 (no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _round(value) -> float:
    return round(float(value), DECIMALS)


def cross_entropy(actual, probabilities) -> float:
    """Mean of -log p(true class), with p clipped to [EPSILON, 1]; 0.0 for no samples."""
    probabilities = np.asarray(probabilities)
    actual = _labels(actual, "actual", probabilities.shape[1] if probabilities.ndim == 2 else 0)
    if probabilities.ndim != 2 or probabilities.shape[0] != actual.size:
        raise ValueError(f"probabilities must have shape ({actual.size}, K), got {probabilities.shape}")
    if actual.size == 0:
        return 0.0
    p_true = probabilities[np.arange(actual.size), actual].astype(np.float64)
    return float(np.mean(-np.log(np.clip(p_true, EPSILON, 1.0))))


def classification_report(actual, predicted, probabilities, class_names: Sequence[str]) -> dict:
    """Accuracy, loss, macro and per-class precision/recall/F1 as a JSON-ready dict.

    ``per_class[name]["accuracy"]`` is the share of that class's samples
    classified correctly, i.e. its recall. A class that is never predicted has
    precision 0 (and so F1 0); a class with no samples has recall 0. Macro
    averages are unweighted means over all classes.
    """
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    if len(set(class_names)) != num_classes:
        raise ValueError(f"class names must be unique, got {class_names}")
    matrix = confusion_matrix(actual, predicted, num_classes)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (matrix.sum(), num_classes):
        raise ValueError(f"probabilities must have shape ({matrix.sum()}, {num_classes}), "
                         f"got {probabilities.shape}")

    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = _safe_divide(true_positive, predicted_count)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    samples = int(matrix.sum())

    per_class = {
        name: {
            "accuracy": _round(recall[k]),
            "precision": _round(precision[k]),
            "recall": _round(recall[k]),
            "f1": _round(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(class_names)
    }
    return {
        "accuracy": _round(_safe_divide(true_positive.sum(), samples)),
        "loss": _round(cross_entropy(actual, probabilities)),
        "macro_precision": _round(precision.mean()),
        "macro_recall": _round(recall.mean()),
        "macro_f1": _round(f1.mean()),
        "per_class": per_class,
        "samples": samples,
    }
