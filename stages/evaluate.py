"""Evaluate stage: models/model.npz on data/prepared/test.npz -> metrics and plots.

Writes metrics/eval.json (accuracy, loss, macro and per-class precision/recall/F1),
plots/confusion.csv (actual,predicted class names, one row per test image, for
DVC's confusion template), and the PNGs plots/loss_curve.png, plots/accuracy_plot.png
(from plots/history.csv), plots/confusion_matrix.png and plots/misclassified.png.
Every input is read and checked before the first output is written.
"""

import sys
from pathlib import Path

import numpy as np

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.infra.atomic import all_or_nothing, write_csv, write_json
from mnist_classification.infra.errors import PipelineError, run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.network import load_network
from mnist_classification.reports.history import read_history
from mnist_classification.reports.metrics import classification_report, confusion_matrix
from mnist_classification.reports.plotting import (
    plot_accuracy,
    plot_confusion_matrix,
    plot_loss_curve,
    plot_misclassified,
)

MODEL = Path("models/model.npz")
TEST = Path("data/prepared/test.npz")
HISTORY = Path("plots/history.csv")
METRICS = Path("metrics/eval.json")
CONFUSION_CSV = Path("plots/confusion.csv")
LOSS_PNG = Path("plots/loss_curve.png")
ACCURACY_PNG = Path("plots/accuracy_plot.png")
CONFUSION_PNG = Path("plots/confusion_matrix.png")
MISCLASSIFIED_PNG = Path("plots/misclassified.png")


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
        probabilities = network.predict_proba(standardise(images, network.mean, network.std))
    if not np.all(np.isfinite(probabilities)):
        raise PipelineError(f"model file {MODEL} gives NaN or infinite outputs on {TEST} (its weights "
                            "overflow); retrain it with a smaller train.lr (dvc repro)")
    predicted = probabilities.argmax(axis=1)
    report = classification_report(labels, predicted, probabilities, classes)

    with all_or_nothing():  # metrics and every plot change together
        write_json(METRICS, report)
        write_csv(CONFUSION_CSV, ("actual", "predicted"),
                  ((classes[a], classes[p]) for a, p in zip(labels.tolist(), predicted.tolist())))
        plot_loss_curve(history, LOSS_PNG)
        plot_accuracy(history, ACCURACY_PNG)
        plot_confusion_matrix(confusion_matrix(labels, predicted, len(classes)), classes, CONFUSION_PNG)
        plot_misclassified(images, labels, predicted, probabilities, classes, MISCLASSIFIED_PNG,
                           params["evaluate"]["gallery_size"])
    print(f"evaluate: test accuracy={report['accuracy']:.4f} loss={report['loss']:.4f} on "
          f"{report['samples']} images; wrote {METRICS}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "evaluate")
