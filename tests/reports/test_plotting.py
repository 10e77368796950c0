"""Figures are written as valid, byte-reproducible PNGs; the history reader fails clearly."""

import struct
import zlib

import numpy as np
import pytest
from matplotlib.image import imread

from mnist_classification.infra.errors import PipelineError
from mnist_classification.reports.calibration import reliability
from mnist_classification.reports.history import read_history
from mnist_classification.reports.plotting import (
    most_confident_errors,
    plot_accuracy,
    plot_confusion_matrix,
    plot_loss_curve,
    plot_misclassified,
    plot_reliability,
)

HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr\n"
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def png_size(path):
    """(width, height) of a PNG after checking its signature and every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r} chunk"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(chunks), "PNG carries variable metadata"
    assert imread(path).ndim == 3  # decodes
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def history_rows(tmp_path):
    path = tmp_path / "history.csv"
    lines = [f"{e},{1 / e:.6g},{1 - 0.5 / e:.6g},{1.2 / e + 0.01 * e:.6g},{0.97 - 0.5 / e:.6g},0.001\n"
             for e in range(1, 8)]
    path.write_text(HEADER + "".join(lines))
    return read_history(path)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(1)
    n = 40
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    actual = rng.integers(0, 10, n).astype(np.uint8)
    logits = rng.normal(size=(n, 10))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    return images, actual, probs.argmax(axis=1), probs


def write_twice(tmp_path, plot):
    first, second = tmp_path / "a" / "figure.png", tmp_path / "b" / "figure.png"
    plot(first)
    plot(second)
    width, height = png_size(first)
    assert 100 < width <= 2000 and 100 < height <= 2000
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in first.parent.iterdir()) == ["figure.png"]  # no temporary files left
    return first


def test_loss_curve(tmp_path, history_rows):
    write_twice(tmp_path, lambda path: plot_loss_curve(history_rows, path))


def test_accuracy_plot(tmp_path, history_rows):
    write_twice(tmp_path, lambda path: plot_accuracy(history_rows, path))


def test_single_epoch_and_nan_history_still_plot(tmp_path, history_rows):
    rows = [dict(history_rows[0], val_loss=float("nan"), val_accuracy=float("nan"))]
    write_twice(tmp_path, lambda path: plot_loss_curve(rows, path))


def test_confusion_matrix_with_long_names(tmp_path):
    matrix = np.arange(100).reshape(10, 10) * 13
    write_twice(tmp_path, lambda path: plot_confusion_matrix(matrix, FASHION, path))


def test_confusion_matrix_all_zero_and_wrong_shape(tmp_path):
    write_twice(tmp_path, lambda path: plot_confusion_matrix(np.zeros((3, 3), int), ["a", "b", "c"], path))
    with pytest.raises(ValueError):
        plot_confusion_matrix(np.zeros((3, 3), int), ["a", "b"], tmp_path / "x.png")


def test_reliability_diagram(tmp_path, predictions):
    _, actual, _, probs = predictions
    write_twice(tmp_path, lambda path: plot_reliability(reliability(probs, actual), path))


def test_reliability_diagram_with_no_images(tmp_path):
    empty = reliability(np.zeros((0, 10)), np.zeros(0, np.int64))
    write_twice(tmp_path, lambda path: plot_reliability(empty, path))


def test_misclassified_gallery(tmp_path, predictions):
    images, actual, predicted, probs = predictions
    assert np.count_nonzero(actual != predicted) > 9
    write_twice(tmp_path, lambda path: plot_misclassified(images, actual, predicted, probs, FASHION, path, 9))


def test_misclassified_gallery_with_fewer_errors_than_limit(tmp_path, predictions):
    images, actual, predicted, probs = predictions
    actual = predicted.copy()
    actual[[3, 7]] = (predicted[[3, 7]] + 1) % 10
    write_twice(tmp_path, lambda path: plot_misclassified(images, actual, predicted, probs, FASHION, path, 36))


def test_misclassified_gallery_with_no_errors(tmp_path, predictions):
    images, _, predicted, probs = predictions
    path = write_twice(tmp_path, lambda p: plot_misclassified(images, predicted, predicted, probs, FASHION, p, 36))
    assert path.stat().st_size < 30_000


def test_most_confident_errors_order():
    actual = np.array([0, 0, 1, 1, 2])
    predicted = np.array([1, 0, 0, 2, 0])
    probs = np.array([[0.3, 0.7, 0], [1, 0, 0], [0.9, 0.1, 0], [0.2, 0.2, 0.6], [0.7, 0, 0.3]])
    np.testing.assert_array_equal(most_confident_errors(actual, predicted, probs, 10), [2, 0, 4, 3])
    np.testing.assert_array_equal(most_confident_errors(actual, predicted, probs, 2), [2, 0])
    # ties keep index order
    np.testing.assert_array_equal(most_confident_errors([1, 1], [0, 0], np.full((2, 2), 0.5), 2), [0, 1])


def test_read_history(tmp_path, history_rows):
    assert len(history_rows) == 7
    assert history_rows[0]["epoch"] == 1 and isinstance(history_rows[0]["epoch"], int)
    assert history_rows[1]["train_loss"] == 0.5


def test_read_history_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="history.csv not found"):
        read_history(tmp_path / "plots" / "history.csv")


@pytest.mark.parametrize("text, message", [
    ("", "missing column"),
    ("epoch,train_loss\n1,0.5\n", "missing column"),
    (HEADER, "no epochs"),
    (HEADER + "1,0.5,0.9,0.6,oops,0.001\n", "line 2: val_accuracy is 'oops'"),
    (HEADER + "1,0.5,0.9\n", "line 2: wrong number of fields"),
    (HEADER + "1,0.5,0.9,0.6,0.8,0.001,7\n", "line 2: wrong number of fields"),
])
def test_read_history_bad_file(tmp_path, text, message):
    path = tmp_path / "history.csv"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message):
        read_history(path)
