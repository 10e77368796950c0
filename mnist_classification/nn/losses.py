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
    """Mean cross-entropy of softmax(logits) against integer labels, optionally label-smoothed.

    ``forward(logits (N, K), labels (N,)) -> loss`` (a float, nats per sample);
    ``backward() -> dloss/dlogits`` (N, K) = (softmax - target) / N, with target the one-hot labels,
    or with ``label_smoothing`` e the mixture (1 - e) * onehot + e / K (Szegedy et al. 2016), whose
    cross-entropy is (1 - e) * CE(label) + e * mean over classes of -log p.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        shifted, probs, norm = _softmax_parts(logits)
        rows = np.arange(len(labels))
        self._probs, self._labels, self._rows = probs, labels, rows
        e = self.label_smoothing
        picked = shifted[rows, labels]
        if e:
            real = shifted.dtype.type  # float32 constants would round float64 logits' loss
            picked = real(1 - e) * picked + real(e) * shifted.mean(axis=1)
        return float(np.mean(np.log(norm) - picked, dtype=np.float64))

    def backward(self) -> np.ndarray:
        grad = self._probs.copy()
        e, real = self.label_smoothing, grad.dtype.type
        if e:
            grad -= real(e / grad.shape[1])
        grad[self._rows, self._labels] -= real(1 - e)
        grad /= real(len(self._labels))
        return grad
