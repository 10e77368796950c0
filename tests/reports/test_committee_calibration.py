"""The committee's temperature: fitted to the average of its members' probabilities on held-out data.

Hand-checkable case: every image gets the same averaged probabilities (q, 1 - q) and a share a of the
images is class 0. softmax(log(p) / T) gives class 0 the probability q^(1/T) / (q^(1/T) + (1 - q)^(1/T)),
whose cross-entropy is least when it equals a, that is at 1 / T = logit(a) / logit(q).
"""

import numpy as np
import pytest

from mnist_classification.nn.committee import scale_probabilities
from mnist_classification.reports.committee_calibration import calibrate_committee


def _members(rows: list[tuple[float, float]], n: int) -> list[np.ndarray]:
    """One (n, 2) float32 array per member, every image given that member's row."""
    return [np.tile(np.array(row, dtype=np.float32), (n, 1)) for row in rows]


def _labels(n: int, zeros: int) -> np.ndarray:
    return np.array([0] * zeros + [1] * (n - zeros))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_under_confident_committee_gets_sharpened():
    # Members at 0.95 and 0.85 average to 0.9 on images that are class 0 99 times in 100.
    scaling = calibrate_committee(_members([(0.95, 0.05), (0.85, 0.15)], 100), _labels(100, 99))
    assert scaling.fitted == pytest.approx(_logit(0.9) / _logit(0.99), rel=1e-3)  # 0.478
    assert scaling.temperature == scaling.fitted < 1  # kept: the loss and ECE fall
    assert scaling.nll_before == pytest.approx(-(0.99 * np.log(0.9) + 0.01 * np.log(0.1)), abs=1e-6)
    assert scaling.nll_after == pytest.approx(-(0.99 * np.log(0.99) + 0.01 * np.log(0.01)), abs=1e-6)
    assert scaling.ece_before == pytest.approx(0.09, abs=1e-6) and scaling.ece_after == pytest.approx(0, abs=1e-4)


def test_over_confident_committee_gets_softened():
    # Members at 0.999 and 0.981 average to 0.99 on images that are class 0 9 times in 10.
    scaling = calibrate_committee(_members([(0.999, 0.001), (0.981, 0.019)], 100), _labels(100, 90))
    assert scaling.fitted == pytest.approx(_logit(0.99) / _logit(0.9), rel=1e-3)  # 2.09
    assert scaling.temperature == scaling.fitted > 1
    assert scaling.ece_before == pytest.approx(0.09, abs=1e-6) and scaling.ece_after == pytest.approx(0, abs=1e-4)
    softened = scale_probabilities(np.array([[0.99, 0.01]], np.float32), scaling.temperature)
    np.testing.assert_allclose(softened, [[0.9, 0.1]], atol=1e-4)  # the committee then says 0.9, as it should


def test_calibrated_committee_keeps_about_one():
    # Members at 0.9 and 0.5 average to 0.7 on images that are class 0 7 times in 10: already calibrated.
    scaling = calibrate_committee(_members([(0.9, 0.1), (0.5, 0.5)], 100), _labels(100, 70))
    assert scaling.fitted == pytest.approx(1.0, abs=1e-3)


def test_members_that_disagree_make_an_under_confident_average():
    """Calibrated members whose errors are independent average into an under-confident committee: T < 1.

    Each member sees the one-hot label times 3 plus its own Gaussian noise (sigma 1.5) and reports the exact
    posterior, softmax(observation * 3 / sigma^2): each member is calibrated, their average is not."""
    rng = np.random.default_rng(0)
    n, k = 4000, 10
    labels = rng.integers(0, k, n)
    signal = 3.0 * np.eye(k)[labels]
    members = []
    for _ in range(5):
        logits = (signal + rng.normal(0, 1.5, (n, k))) * (3.0 / 1.5**2)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        members.append((exp / exp.sum(axis=1, keepdims=True)).astype(np.float32))
    assert calibrate_committee(members[:1], labels).fitted == pytest.approx(1.0, abs=0.1)  # a member alone
    scaling = calibrate_committee(members, labels)
    assert scaling.temperature < 0.9 and scaling.nll_after < scaling.nll_before


def test_a_labelled_class_given_zero_stays_finite():
    """A member average of exactly 0 on the true class (float32 underflow in every member) is floored."""
    members = _members([(1.0, 0.0)], 10)
    scaling = calibrate_committee(members, _labels(10, 9))
    assert np.isfinite([scaling.nll_before, scaling.nll_after]).all()
    assert scaling.temperature > 1  # one confident error in ten: softer
