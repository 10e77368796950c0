"""The training loop: shuffled mini-batches, scheduled learning rate, early stopping.

Early stopping watches validation accuracy after every epoch: once it has not
improved for ``patience`` epochs training stops, and the weights of the best
epoch are restored either way. A loss that becomes NaN, infinite or far above
chance level stops training with a :class:`TrainingDiverged` error that names the
epoch; the caller then writes no model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.progress import ProgressBar
from mnist_classification.nn.losses import SoftmaxCrossEntropy
from mnist_classification.nn.network import Network
from mnist_classification.nn.optimizers import Optimizer
from mnist_classification.nn.schedules import Schedule


class TrainingDiverged(PipelineError):
    """The loss blew up; the message names the epoch and suggests a smaller learning rate."""


@dataclass
class TrainResult:
    """Per-epoch history rows (keys :data:`.history.HISTORY_COLUMNS`) and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    stopped_early: bool = False
    seconds: float = 0.0
    samples_seen: int = 0


def evaluate(network: Network, images: np.ndarray, labels: np.ndarray, batch_size: int = 250
             ) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``network`` on standardised images (N, H, W).

    Batches of 250 keep a CNN's activations (about 0.8 MB per image) small next to the training data.
    """
    loss_fn = SoftmaxCrossEntropy()
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch_labels = labels[start:start + batch_size]
        logits = network.forward(images[start:start + batch_size], training=False)
        total_loss += loss_fn.forward(logits, batch_labels) * len(batch_labels)
        correct += int(np.count_nonzero(logits.argmax(axis=1) == batch_labels))
    return total_loss / len(images), correct / len(images)


def choose_mirror_average(network: Network, images: np.ndarray, labels: np.ndarray
                          ) -> tuple[dict, np.ndarray]:
    """Turn ``network.mirror_average`` on if averaging with mirrored images raises its accuracy on these
    (validation) images (N, H, W), or keeps it and lowers the cross-entropy; off otherwise.

    Returns both scores, ``{"kept": bool, "val_accuracy": {"plain", "mirrored"}, "val_loss": {"plain",
    "mirrored"}}``, and the logits (N, K) of the chosen setting, those ``network.predict_logits(images)``
    now gives (one pass over the images and one over their mirrors).
    """
    network.mirror_average = False
    plain = network.predict_logits(images)
    averaged = network.predict_logits(np.ascontiguousarray(images[:, :, ::-1]))
    averaged += plain  # the sum and halving predict_logits computes with mirror_average on
    averaged /= np.float32(2)
    loss_fn, labels = SoftmaxCrossEntropy(), labels.astype(np.intp)
    (plain_accuracy, plain_loss), (mirrored_accuracy, mirrored_loss) = (
        (float(np.mean(logits.argmax(axis=1) == labels)), loss_fn.forward(logits, labels))
        for logits in (plain, averaged))
    network.mirror_average = (mirrored_accuracy, -mirrored_loss) > (plain_accuracy, -plain_loss)
    summary = {"kept": network.mirror_average,
               "val_accuracy": {"plain": round(plain_accuracy, 6), "mirrored": round(mirrored_accuracy, 6)},
               "val_loss": {"plain": round(plain_loss, 6), "mirrored": round(mirrored_loss, 6)}}
    return summary, averaged if network.mirror_average else plain


def train(network: Network, optimizer: Optimizer, schedule: Schedule,
          train_images: np.ndarray, train_labels: np.ndarray,
          val_images: np.ndarray, val_labels: np.ndarray,
          epochs: int, batch_size: int, patience: int, rng: np.random.Generator,
          augment: Callable[[np.ndarray], np.ndarray] | None = None,
          progress: bool = True, on_epoch_end: Callable[[dict], None] | None = None,
          label_smoothing: float = 0.0) -> TrainResult:
    """Train ``network`` in place on standardised float32 images (N, H, W) and labels (N,) in 0..K-1.

    ``augment`` (optional) maps a training batch to an augmented batch of the
    same shape. ``patience`` 0 turns early stopping off (the best epoch's
    weights are still restored). ``on_epoch_end`` (optional) is called with each
    epoch's history row as soon as the epoch is validated (the train stage logs it live).
    ``label_smoothing`` smooths the training targets (the training loss reported is then the
    smoothed one; the validation loss stays the plain cross-entropy).
    """
    labels = train_labels.astype(np.intp)
    n = len(train_images)
    steps = math.ceil(n / batch_size)
    loss_fn = SoftmaxCrossEntropy(label_smoothing)
    divergence_limit = 20 * math.log(len(network.classes))
    result = TrainResult()
    best_state = network.state()
    batch_buffer = np.empty((batch_size, *train_images.shape[1:]), dtype=np.float32)
    start_time = time.perf_counter()
    since_best = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        bar = ProgressBar(f"epoch {epoch}/{epochs}", steps, unit="batch") if progress else None
        epoch_loss, epoch_correct = 0.0, 0
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            batch = batch_buffer[:len(index)]
            np.take(train_images, index, axis=0, out=batch)
            if augment is not None:
                batch = augment(batch)
            batch_labels = labels[index]
            optimizer.lr = schedule.rate(epoch - 1 + (step + 1) / steps)
            logits = network.forward(batch, training=True)
            loss = loss_fn.forward(logits, batch_labels)
            if not math.isfinite(loss):
                raise _diverged(epoch, loss, schedule.lr)
            network.backward(loss_fn.backward())
            optimizer.update(network.trainable())
            epoch_loss += loss * len(index)
            epoch_correct += int(np.count_nonzero(logits.argmax(axis=1) == batch_labels))
            if bar is not None:
                seen = step * batch_size + len(index)
                bar.update(step + 1, loss=epoch_loss / seen, acc=epoch_correct / seen)
        train_loss, train_accuracy = epoch_loss / n, epoch_correct / n
        if not math.isfinite(train_loss) or train_loss > divergence_limit:
            raise _diverged(epoch, train_loss, schedule.lr)
        val_loss, val_accuracy = evaluate(network, val_images, val_labels)
        if not math.isfinite(val_loss):  # the epoch's last update overflowed the weights
            raise _diverged(epoch, val_loss, schedule.lr, "validation loss")
        result.samples_seen += n
        result.history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                               "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": optimizer.lr})
        if on_epoch_end is not None:
            on_epoch_end(result.history[-1])
        if bar is not None:
            bar.close(loss=train_loss, acc=train_accuracy, val_loss=val_loss, val_acc=val_accuracy)
        if val_accuracy > result.best_val_accuracy:
            result.best_val_accuracy, result.best_epoch = val_accuracy, epoch
            best_state = network.state()
            since_best = 0
        else:
            since_best += 1
            if patience and since_best >= patience:
                result.stopped_early = True
                break
    network.load_state(best_state)
    result.seconds = time.perf_counter() - start_time
    return result


def _diverged(epoch: int, loss: float, lr: float, which: str = "training loss") -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged at epoch {epoch}: the {which} became {loss:.4g}. "
        f"Try a smaller learning rate than train.lr={lr:g}, e.g. `dvc exp run -S train.lr={lr / 10:g}`; "
        "no model was written"
    )
