"""Calibration of predicted probabilities: reliability bins, expected calibration error, temperature scaling.

A model is calibrated when, among the images it classifies with confidence
about p, a share p is right. The confidence of an image is its top
probability. :func:`reliability` bins the confidences into equal-width bins
over [0, 1]; the expected calibration error (ECE) is the mean over images of
|accuracy - confidence| of their bin (Guo et al. 2017, "On Calibration of
Modern Neural Networks"). Temperature scaling divides the logits by one
scalar T > 0 fitted to minimise the cross-entropy on held-out data: it
changes confidences, never the predicted class. :func:`calibrate` fits T and
keeps it only if it helps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: Equal-width confidence bins over [0, 1] (Guo et al. use 15).
BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics, each an array of shape (bins,): bin edges are ``edges[k]..edges[k + 1]``."""

    edges: np.ndarray       # (bins + 1,) float64 in [0, 1]
    count: np.ndarray       # images whose confidence falls in the bin, int64
    confidence: np.ndarray  # mean confidence of those images (0 for an empty bin)
    accuracy: np.ndarray    # share of them classified right (0 for an empty bin)

    @property
    def expected_calibration_error(self) -> float:
        """Sum over bins of (count / total) * |accuracy - confidence|; 0.0 for no images."""
        total = self.count.sum()
        if total == 0:
            return 0.0
        return float(np.sum(self.count / total * np.abs(self.accuracy - self.confidence)))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the top probability of each row of ``probabilities`` (N, K) against ``labels`` (N,) int."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != (probabilities.shape[0],):
        raise ValueError(f"probabilities must be (N, K) and labels (N,), got {probabilities.shape} "
                         f"and {labels.shape}")
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    # Bin k holds (edges[k], edges[k + 1]]; a confidence of exactly 0 goes to the first bin.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    safe = np.maximum(count, 1)
    return Reliability(
        edges=np.linspace(0.0, 1.0, bins + 1),
        count=count.astype(np.int64),
        confidence=np.bincount(which, weights=confidence, minlength=bins) / safe,
        accuracy=np.bincount(which, weights=correct, minlength=bins) / safe,
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def scaled_cross_entropy(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy (nats) of softmax(logits / temperature) (N, K) against ``labels`` (N,).

    Log-probabilities are logits up to a per-row constant, so they may be passed
    instead of logits: dividing them by T is exactly temperature scaling.
    """
    log_p = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-np.mean(log_p[np.arange(labels.size), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0), tolerance: float = 1e-4) -> float:
    """The T in ``bounds`` minimising :func:`scaled_cross_entropy`, by golden-section search on log T.

    The cross-entropy is convex in 1/T (a log-sum-exp of a linear function of
    1/T), hence unimodal in log T, so the search finds the minimum within a
    factor ``exp(tolerance)``. Deterministic: the same inputs give the same T.
    """
    labels = np.asarray(labels)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or labels.size == 0:
        raise ValueError(f"need (N, K) logits and (N,) labels with N > 0, got "
                         f"{logits.shape} and {labels.shape}")
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    low, high = np.log(bounds[0]), np.log(bounds[1])

    def loss(log_t: float) -> float:
        return scaled_cross_entropy(logits, labels, float(np.exp(log_t)))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > tolerance:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(np.exp((low + high) / 2.0))


#: Temperature scaling is kept only if it raises the validation ECE by at most this (0.2 points):
#: ECE over a few thousand images moves by about that much from binning noise alone.
ECE_TOLERANCE = 0.002


@dataclass(frozen=True)
class TemperatureScaling:
    """A temperature fitted on held-out data, and what it does there (cross-entropy in nats, ECE in [0, 1])."""

    fitted: float       # the T minimising the cross-entropy, to 5 significant digits
    temperature: float  # the T to keep: ``fitted`` if it helps (see :func:`calibrate`), else 1.0
    nll_before: float   # at T = 1
    nll_after: float    # at T = fitted
    ece_before: float
    ece_after: float

    def summary(self) -> dict:
        """The figures as a JSON-ready dict (6 decimals)."""
        return {"temperature": self.temperature, "fitted_temperature": self.fitted,
                **{key: round(getattr(self, key), 6)
                   for key in ("nll_before", "nll_after", "ece_before", "ece_after")}}


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))
    return reliability(probabilities, labels).expected_calibration_error


def calibrate(logits: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
    """Fit T on held-out ``logits`` (N, K) and ``labels`` (N,); keep it only if it helps.

    T is kept when it lowers the cross-entropy and raises the ECE by at most
    :data:`ECE_TOLERANCE`; otherwise the model keeps T = 1 (its logits as they are).
    """
    fitted = float(f"{fit_temperature(logits, labels):.5g}")
    scaling = TemperatureScaling(
        fitted=fitted, temperature=1.0,
        nll_before=scaled_cross_entropy(logits, labels, 1.0), nll_after=scaled_cross_entropy(logits, labels, fitted),
        ece_before=_ece(logits, labels, 1.0), ece_after=_ece(logits, labels, fitted))
    if scaling.nll_after < scaling.nll_before and scaling.ece_after <= scaling.ece_before + ECE_TOLERANCE:
        return replace(scaling, temperature=fitted)
    return scaling
