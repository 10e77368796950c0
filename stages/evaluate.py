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
from mnist_classification.infra.errors import run_cli
from mnist_classification.infra.params import load_params
from mnist_classification.nn.losses import softmax
from mnist_classification.nn.network import load_network
from mnist_classification.reports.evaluation import check_finite, check_test_set, evaluation_live
from mnist_classification.reports.history import read_history
from mnist_classification.reports.plotting import plot_accuracy, plot_loss_curve

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
    check_test_set(images, labels, network.input_shape, network.classes, MODEL, TEST)

    with np.errstate(over="ignore", invalid="ignore"):
        logits = network.predict_logits(standardise(images, network.mean, network.std))
        probabilities = network.probabilities(logits)
    check_finite(probabilities, MODEL, TEST)

    with evaluation_live(PLOTS, METRICS, images, labels, probabilities, softmax(logits), network.classes,
                         params["evaluate"]["gallery_size"],
                         f"Test-set reliability, T = {network.temperature:.3g}") as (live, report):
        live.summary["temperature"] = network.temperature
        figures = Path(live.plots_dir) / "images"
        plot_loss_curve(history, figures / "loss_curve.png")
        plot_accuracy(history, figures / "accuracy_plot.png")
    print(f"evaluate: test accuracy={report['accuracy']:.4f} loss={report['loss']:.4f} on "
          f"{report['samples']} images; wrote {METRICS}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, "evaluate")
