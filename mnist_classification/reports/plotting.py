"""Figures for the evaluate stage, written as small, byte-reproducible PNGs.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly: no pyplot, no global figure state, no GUI backend. PNGs are written
atomically without the "Software" metadata chunk (the only metadata matplotlib
stamps into a PNG), so identical inputs give byte-identical files and DVC sees
no spurious change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_classification.infra.atomic import atomic_open
from mnist_classification.reports.calibration import Reliability

DPI = 100

_TRAIN_COLOUR = "tab:blue"
_VAL_COLOUR = "tab:orange"


# --------------------------------------------------------------------------- saving

def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` to ``path`` as a PNG, atomically and without variable metadata."""
    with atomic_open(path) as handle:
        figure.savefig(handle, format="png", dpi=DPI, metadata={"Software": None})


# --------------------------------------------------------------------------- learning curves

def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([row[key] for row in rows], dtype=np.float64)


def _curve(history_rows: Sequence[dict], path, train_key: str, val_key: str, ylabel: str, title: str) -> None:
    """Train and validation ``*_key`` per epoch, with a line at the epoch whose weights training kept.

    Training keeps the first epoch with the highest validation accuracy, so both
    curves mark that epoch (not, say, the lowest validation loss).
    """
    if not history_rows:
        raise ValueError("history_rows is empty")
    epochs = _column(history_rows, "epoch")
    train, val = _column(history_rows, train_key), _column(history_rows, val_key)
    val_accuracy = _column(history_rows, "val_accuracy")
    figure = _new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    axes.plot(epochs, train, marker="o", markersize=3, color=_TRAIN_COLOUR, label="train")
    axes.plot(epochs, val, marker="o", markersize=3, color=_VAL_COLOUR, label="validation")
    if np.isfinite(val_accuracy).any():
        kept = int(np.argmax(np.where(np.isfinite(val_accuracy), val_accuracy, -np.inf)))
        axes.axvline(epochs[kept], color="grey", linestyle="--", linewidth=0.8,
                     label=f"kept weights (best validation accuracy): epoch {int(epochs[kept])}, "
                           f"validation {val[kept]:.4f}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)  # whole epochs as ticks, even for a one-epoch run
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    _save(figure, path)


def plot_loss_curve(history_rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Train and validation loss against epoch."""
    _curve(history_rows, path, "train_loss", "val_loss", "cross-entropy loss", "Loss per epoch")


def plot_accuracy(history_rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Train and validation accuracy against epoch."""
    _curve(history_rows, path, "train_accuracy", "val_accuracy", "accuracy", "Accuracy per epoch")


# --------------------------------------------------------------------------- confusion matrix

def plot_confusion_matrix(matrix, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Heat map of a (K, K) count matrix (rows actual, columns predicted), every count written.

    Colours use a square-root scale so that small off-diagonal error counts
    stay visible next to the large diagonal.
    """
    matrix = np.asarray(matrix)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix has shape {matrix.shape} but there are {k} class names")
    size = max(4.0, 0.55 * k + 2.5)
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    vmax = max(1, int(matrix.max()) if matrix.size else 1)
    image = axes.imshow(matrix, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0, vmax=vmax))
    figure.colorbar(image, ax=axes, shrink=0.8, label="test images")
    fontsize = 8 if k <= 12 else max(4, int(96 / k))
    threshold = 0.5 * vmax ** 0.5  # where PowerNorm crosses the middle of the colour map
    for row in range(k):
        for col in range(k):
            count = int(matrix[row, col])
            colour = "white" if count ** 0.5 > threshold else "black"
            axes.text(col, row, str(count), ha="center", va="center", fontsize=fontsize, color=colour)
    ticks = np.arange(k)
    axes.set_xticks(ticks, [str(name) for name in class_names], rotation=45, ha="right",
                    rotation_mode="anchor", fontsize=9)
    axes.set_yticks(ticks, [str(name) for name in class_names], fontsize=9)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("actual class")
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    accuracy = f"{correct / total:.2%}" if total else "n/a"
    axes.set_title(f"Confusion matrix: {correct} of {total} correct ({accuracy})")
    _save(figure, path)


# --------------------------------------------------------------------------- calibration

def plot_reliability(bins: Reliability, path: str | os.PathLike, title: str = "Reliability diagram") -> None:
    """Accuracy against mean confidence per confidence bin, the diagonal a calibrated model follows,
    and the share of images in each bin; the title gives the expected calibration error."""
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = float(bins.edges[1] - bins.edges[0])
    filled = bins.count > 0
    figure = _new_figure(5.0, 5.5)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    top.bar(centres[filled], bins.accuracy[filled], width=width * 0.9, color=_TRAIN_COLOUR, alpha=0.7,
            label="accuracy in bin")
    top.plot(bins.confidence[filled], bins.accuracy[filled], "o", color=_VAL_COLOUR, markersize=4,
             label="(mean confidence, accuracy)")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title}: ECE {bins.expected_calibration_error:.4f}")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    total = max(int(bins.count.sum()), 1)
    bottom.bar(centres, bins.count / total, width=width * 0.9, color="grey")
    bottom.set_yscale("symlog", linthresh=0.01)
    bottom.set_ylabel("share of images")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_xlim(0, 1)
    _save(figure, path)


# --------------------------------------------------------------------------- misclassified gallery

def most_confident_errors(actual, predicted, probabilities, limit: int) -> np.ndarray:
    """Indices of up to ``limit`` misclassified samples, most confident prediction first.

    Ties keep index order, so the selection is deterministic.
    """
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    probabilities = np.asarray(probabilities)
    errors = np.flatnonzero(actual != predicted)
    confidence = probabilities[errors, predicted[errors]]
    order = np.argsort(-confidence.astype(np.float64), kind="stable")
    return errors[order[:limit]]


def _percent(probability: float) -> str:
    """``99.5%``; never rounds a probability below 1 up to ``100.0%``."""
    text = f"{probability:.1%}"
    return ">99.9%" if text == "100.0%" and probability < 1 else text


def plot_misclassified(images_u8, actual, predicted, probabilities, class_names: Sequence[str],
                       path: str | os.PathLike, limit: int) -> None:
    """A grid of up to ``limit`` misclassified images, the most confident errors first.

    Each image is titled with its true class, the predicted class and the
    predicted class's probability. With no errors the figure says so.
    """
    images = np.asarray(images_u8)
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    probabilities = np.asarray(probabilities)
    n = len(images)
    if images.ndim != 3 or actual.shape != (n,) or predicted.shape != (n,) \
            or probabilities.shape != (n, len(class_names)):
        raise ValueError(f"inconsistent shapes: images {images.shape}, actual {actual.shape}, "
                         f"predicted {predicted.shape}, probabilities {probabilities.shape} "
                         f"for {len(class_names)} classes")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    total_errors = int(np.count_nonzero(actual != predicted))
    chosen = most_confident_errors(actual, predicted, probabilities, limit)

    if chosen.size == 0:
        figure = _new_figure(5.0, 2.0)
        figure.text(0.5, 0.5, f"No misclassified test images\n(0 errors in {n} samples)",
                    ha="center", va="center", fontsize=14)
        _save(figure, path)
        return

    # Axes are placed by hand: constrained layout costs seconds for dozens of axes.
    cols = math.ceil(math.sqrt(chosen.size))
    rows = math.ceil(chosen.size / cols)
    cell_w, cell_h, image_in, header = 1.3, 1.65, 1.15, 0.65  # inches
    width, height = max(4.0, cell_w * cols + 0.2), cell_h * rows + header
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    left0 = (width - cell_w * cols) / 2
    for slot, index in enumerate(chosen.tolist()):
        row, col = divmod(slot, cols)
        left = left0 + col * cell_w + (cell_w - image_in) / 2
        bottom = height - header - (row + 1) * cell_h + 0.08
        axes = figure.add_axes((left / width, bottom / height, image_in / width, image_in / height))
        axes.set_axis_off()
        true_name = class_names[int(actual[index])]
        pred_name = class_names[int(predicted[index])]
        probability = float(probabilities[index, predicted[index]])
        axes.imshow(images[index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes.set_title(f"true: {true_name}\npred: {pred_name} ({_percent(probability)})",
                       fontsize=7, pad=3)
    shown = f"the {chosen.size} most confident" if chosen.size < total_errors else f"all {total_errors}"
    figure.suptitle(f"Misclassified test images\n{shown} of {total_errors} errors in {n} samples",
                    fontsize=10, y=1 - 0.08 / height, va="top")
    _save(figure, path)
