"""Softmax cross-entropy, numerically stable, on float32 logits."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K) -> probabilities (N, K); shifts by the row max."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    ``forward(logits (N, K), labels (N,)) -> loss`` (a float, nats per sample);
    ``backward() -> dloss/dlogits`` (N, K) = (softmax - onehot) / N.
    """

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        norm = probs.sum(axis=1)
        probs /= norm[:, None]
        rows = np.arange(len(labels))
        self._probs, self._labels, self._rows = probs, labels, rows
        return float(np.mean(np.log(norm) - shifted[rows, labels], dtype=np.float64))

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the last forward's logits, (N, K)."""
        return self._probs

    def backward(self) -> np.ndarray:
        grad = self._probs.copy()
        grad[self._rows, self._labels] -= 1
        grad /= np.float32(len(self._labels))
        return grad
