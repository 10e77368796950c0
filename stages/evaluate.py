"""Evaluate stage: models/model.npz on data/prepared/test.npz -> metrics and plots.

Logs through DVCLive: its summary is metrics/eval.json (accuracy, loss, macro and
per-class precision/recall/F1, and ``ece``, the expected calibration error over 15
confidence bins, all of the probabilities the model reports: softmax(logits / temperature);
``temperature`` is the model's, ``ece_uncalibrated`` and ``loss_uncalibrated`` those of
softmax(logits)); dvclive/evaluate/plots/ holds the confusion data
(sklearn/confusion_matrix.json: actual and predicted class names, one record per test
image), the reliability diagram's bins (custom/reliability.json: mean confidence,
accuracy and image count per non-empty bin) and the PNGs images/loss_curve.png,
images/accuracy_plot.png (from plots/history.csv), images/confusion_matrix.png,
images/reliability.png and images/misclassified.png.
Every input is read and checked before the first output is written, and all
outputs are replaced together.
"""

import sys
from pathlib import Path

import numpy as np

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.losses import softmax
from mnist_classification.nn.network import load_network
from mnist_classification.reports.calibration import reliability
from mnist_classification.reports.history import read_history
from mnist_classification.reports.live import staged_live
from mnist_classification.reports.metrics import classification_report, confusion_matrix, cross_entropy
from mnist_classification.reports.plotting import (
    plot_accuracy,
    plot_confusion_matrix,
    plot_loss_curve,
    plot_misclassified,
    plot_reliability,
)

MODEL = Path("models/model.npz")
TEST = Path("data/prepared/test.npz")
HISTORY = Path("plots/history.csv")
METRICS = Path("metrics/eval.json")
PLOTS = Path("dvclive/evaluate/plots")


def main() -> None:
    params = load_params("params.yaml")
    network = load_network(MODEL)
    images, labels = load_prepared(TEST)
    history = read_history(HISTORY)
    classes = network.classes
    if tuple(images.shape[1:]) != network.input_shape:
        raise PipelineError(f"{TEST} holds {images.shape[1:]} images but {MODEL} expects "
                            f"{network.input_shape}; re-run the pipeline (dvc repro)")
    if int(labels.max()) >= len(classes):
        raise PipelineError(f"{TEST} has label {int(labels.max())} but {MODEL} knows only {len(classes)} "
                            f"classes; re-run the pipeline (dvc repro)")

    with np.errstate(over="ignore", invalid="ignore"):
        logits = network.predict_logits(standardise(images, network.mean, network.std))
        probabilities = network.probabilities(logits)
    if not np.all(np.isfinite(probabilities)):
        raise PipelineError(f"model file {MODEL} gives NaN or infinite outputs on {TEST} (its weights "
                            "overflow); retrain it with a smaller train.lr (dvc repro)")
    predicted = probabilities.argmax(axis=1)
    report = classification_report(labels, predicted, probabilities, classes)
    calibration = reliability(probabilities, labels)
    report["ece"] = round(calibration.expected_calibration_error, 6)
    uncalibrated = softmax(logits)
    report["temperature"] = network.temperature
    report["ece_uncalibrated"] = round(reliability(uncalibrated, labels).expected_calibration_error, 6)
    report["loss_uncalibrated"] = round(cross_entropy(labels, uncalibrated), 6)

    with staged_live(PLOTS, METRICS) as live:  # metrics and every plot change together, at the end
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
        plot_loss_curve(history, figures / "loss_curve.png")
        plot_accuracy(history, figures / "accuracy_plot.png")
        plot_confusion_matrix(confusion_matrix(labels, predicted, len(classes)), classes,
                              figures / "confusion_matrix.png")
        plot_reliability(calibration, figures / "reliability.png",
                         f"Test-set reliability, T = {network.temperature:.3g}")
        plot_misclassified(images, labels, predicted, probabilities, classes, figures / "misclassified.png",
                           params["evaluate"]["gallery_size"])
    print(f"evaluate: test accuracy={report['accuracy']:.4f} loss={report['loss']:.4f} on "
          f"{report['samples']} images; wrote {METRICS}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "evaluate")
