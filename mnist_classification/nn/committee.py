"""A committee of networks: it predicts the average of its members' class probabilities.

The members must agree on what goes in and what comes out - the input shape,
the class names (in order) and the normalisation (mean, std) - so that one
standardised batch feeds them all and their probabilities can be averaged
column by column. The ensemble stage and ``predict`` both average through
:func:`average_probabilities`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mnist_classification.infra.errors import PipelineError
from mnist_classification.nn.network import Network, load_network


def average_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """The arithmetic mean, float32 (N, K), of the members' class probabilities, each (N, K)."""
    if not probabilities:
        raise ValueError("no probabilities to average")
    total = np.array(probabilities[0], dtype=np.float32)  # a copy: the members' arrays stay untouched
    for member in probabilities[1:]:
        if member.shape != total.shape:
            raise ValueError(f"members' probabilities have shapes {total.shape} and {member.shape}")
        total += member
    total /= np.float32(len(probabilities))
    return total


class Committee:
    """Networks (loaded from ``paths``, named in errors) that predict together.

    Exposes what :class:`Network` users read - ``input_shape``, ``classes``, ``mean``, ``std``,
    ``predict_proba`` - so it can stand in for a single network.
    """

    def __init__(self, members: Sequence[Network], paths: Sequence[str | Path]) -> None:
        if not members or len(members) != len(paths):
            raise ValueError(f"{len(members)} members for {len(paths)} paths")
        first = members[0]
        for member, path in zip(members[1:], paths[1:]):
            for what, mine, theirs in (("input shapes", first.input_shape, member.input_shape),
                                       ("classes", first.classes, member.classes),
                                       ("normalisation (mean, std)", (first.mean, first.std),
                                        (member.mean, member.std))):
                if mine != theirs:
                    raise PipelineError(f"model files {paths[0]} and {path} cannot form a committee: their "
                                        f"{what} differ ({mine} vs {theirs}); the members must be trained on "
                                        "the same data")
        self.members = list(members)
        self.input_shape, self.classes = first.input_shape, first.classes
        self.mean, self.std = first.mean, first.std

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """The committee's class probabilities (N, K) for standardised inputs ``x`` (N, *input_shape): the
        average of its members' (each calibrated by its own temperature)."""
        return average_probabilities([member.predict_proba(x) for member in self.members])


def load_committee(paths: Sequence[str | Path]) -> Committee:
    """Load every model file of ``paths`` and check that they can form a committee."""
    return Committee([load_network(path) for path in paths], paths)
