"""A model's test-set evaluation as the evaluate and ensemble stages write it, from its class probabilities.

:func:`check_test_set` refuses a test set the model cannot score; :func:`evaluation_report`
turns probabilities into the metrics (accuracy, loss, precision/recall/F1, ``ece``, and the
loss and ECE of the uncalibrated probabilities, softmax(logits), when given);
:func:`evaluation_live` writes them through DVCLive with the confusion data, the reliability
diagram's bins and the figures, all replaced together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mnist_classification.infra.errors import PipelineError
from mnist_classification.reports.calibration import Reliability, reliability
from mnist_classification.reports.live import StageLive, staged_live
from mnist_classification.reports.metrics import classification_report, confusion_matrix, cross_entropy
from mnist_classification.reports.plotting import (
    plot_confusion_matrix,
    plot_misclassified,
    plot_reliability,
)


def check_test_set(images: np.ndarray, labels: np.ndarray, input_shape: tuple[int, ...], classes: Sequence[str],
                   model: str | Path, test: str | Path) -> None:
    """Refuse test images (N, H, W) of another shape than the model's, or labels beyond its classes."""
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise PipelineError(f"{test} holds {images.shape[1:]} images but {model} expects "
                            f"{input_shape}; re-run the pipeline (dvc repro)")
    if int(labels.max()) >= len(classes):
        raise PipelineError(f"{test} has label {int(labels.max())} but {model} knows only {len(classes)} "
                            f"classes; re-run the pipeline (dvc repro)")


def check_finite(probabilities: np.ndarray, model: str | Path, test: str | Path) -> None:
    """Refuse probabilities (N, K) with NaN or infinities: the model's weights overflow."""
    if not np.all(np.isfinite(probabilities)):
        raise PipelineError(f"model file {model} gives NaN or infinite outputs on {test} (its weights "
                            "overflow); retrain it with a smaller train.lr (dvc repro)")


def evaluation_report(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                      uncalibrated: np.ndarray | None = None) -> tuple[dict, np.ndarray, Reliability]:
    """(metrics, predicted classes (N,), reliability bins) for probabilities (N, K) of images labelled (N,).

    The metrics are :func:`classification_report`'s plus ``ece``, the expected calibration error,
    and, given the ``uncalibrated`` probabilities (N, K) too, their ``ece_uncalibrated`` and
    ``loss_uncalibrated``.
    """
    predicted = probabilities.argmax(axis=1)
    report = classification_report(labels, predicted, probabilities, classes)
    calibration = reliability(probabilities, labels)
    report["ece"] = round(calibration.expected_calibration_error, 6)
    if uncalibrated is not None:
        report["ece_uncalibrated"], report["loss_uncalibrated"] = ece_and_loss(uncalibrated, labels)
    return report, predicted, calibration


def ece_and_loss(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(expected calibration error, mean cross-entropy in nats), 6 decimals, of probabilities (N, K)
    for images labelled (N,)."""
    return (round(reliability(probabilities, labels).expected_calibration_error, 6),
            round(cross_entropy(labels, probabilities), 6))


@contextlib.contextmanager
def evaluation_live(plots_dir: str | Path, metrics_file: str | Path, images: np.ndarray, labels: np.ndarray,
                    probabilities: np.ndarray, uncalibrated: np.ndarray, classes: Sequence[str], gallery_size: int,
                    reliability_title: str) -> Iterator[tuple[StageLive, dict]]:
    """Score probabilities (N, K) of uint8 images (N, H, W) labelled (N,), and the ``uncalibrated`` ones
    (N, K); yield (live, metrics), then write, all together:

    ``metrics_file`` (the :func:`evaluation_report` metrics and whatever the block adds to
    ``live.summary``), and under ``plots_dir`` ``sklearn/confusion_matrix.json`` (actual and predicted
    class names per image), ``custom/reliability.json`` (mean confidence, accuracy and image count per
    non-empty bin), ``images/confusion_matrix.png``, ``images/reliability.png`` (titled
    ``reliability_title``), ``images/misclassified.png`` (the ``gallery_size`` most confident errors)
    and what the block logs (more figures go to ``Path(live.plots_dir) / "images"``). On an error
    nothing is written.
    """
    report, predicted, calibration = evaluation_report(probabilities, labels, classes, uncalibrated)
    with staged_live(plots_dir, metrics_file) as live:  # metrics and every plot change together, at the end
        live.summary.update(report)
        live.log_sklearn_plot("confusion_matrix", [classes[a] for a in labels.tolist()],
                              [classes[p] for p in predicted.tolist()])
        filled = calibration.count > 0
        live.log_plot("reliability", [
            {"confidence": round(float(c), 6), "accuracy": round(float(a), 6), "images": int(n)}
            for c, a, n in zip(calibration.confidence[filled], calibration.accuracy[filled],
                               calibration.count[filled])],
            x="confidence", y="accuracy", template="linear")
        figures = Path(live.plots_dir) / "images"
        plot_confusion_matrix(confusion_matrix(labels, predicted, len(classes)), classes,
                              figures / "confusion_matrix.png")
        plot_reliability(calibration, figures / "reliability.png", reliability_title)
        plot_misclassified(images, labels, predicted, probabilities, classes, figures / "misclassified.png",
                           gallery_size)
        yield live, report
