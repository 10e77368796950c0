"""Softmax cross-entropy, numerically stable, on float32 logits."""

from __future__ import annotations

import numpy as np


def _softmax_parts(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shifted logits, probabilities, normaliser): logits (N, K) minus the row max, their
    softmax (N, K) and the row sums of exp(shifted) (N,), so log-softmax = shifted - log(norm)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    norm = probs.sum(axis=1)
    probs /= norm[:, None]
    return shifted, probs, norm


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K) -> probabilities (N, K); shifts by the row max."""
    return _softmax_parts(logits)[1]


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    ``forward(logits (N, K), labels (N,)) -> loss`` (a float, nats per sample);
    ``backward() -> dloss/dlogits`` (N, K) = (softmax - onehot) / N.
    """

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        shifted, probs, norm = _softmax_parts(logits)
        rows = np.arange(len(labels))
        self._probs, self._labels, self._rows = probs, labels, rows
        return float(np.mean(np.log(norm) - shifted[rows, labels], dtype=np.float64))

    def backward(self) -> np.ndarray:
        grad = self._probs.copy()
        grad[self._rows, self._labels] -= 1
        grad /= np.float32(len(self._labels))
        return grad
