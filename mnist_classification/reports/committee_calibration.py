"""The committee's own temperature, fitted on held-out data to the average of its members' probabilities.

Averaging members that are each calibrated leaves the committee under-confident
(their disagreements flatten the average), so the committee gets a temperature
of its own: :func:`mnist_classification.reports.calibration.calibrate` applied to
log(p_avg), the log of the averaged probabilities, in place of logits. Dividing
log(p_avg) by T and taking the softmax is
:func:`mnist_classification.nn.committee.scale_probabilities`, which the
committee applies when it predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mnist_classification.nn.committee import average_probabilities, log_probabilities
from mnist_classification.reports.calibration import TemperatureScaling, calibrate


def calibrate_committee(member_probabilities: Sequence[np.ndarray], labels: np.ndarray) -> TemperatureScaling:
    """The committee temperature for the members' probabilities, each (N, K), of held-out images labelled
    (N,): fitted and kept (or T = 1) by :func:`calibrate`'s rule, with the cross-entropy and ECE of the
    average before (T = 1) and after."""
    return calibrate(log_probabilities(average_probabilities(member_probabilities)), labels)
