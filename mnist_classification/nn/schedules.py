"""Learning-rate schedules as functions of training progress measured in epochs (a float).

With ``warmup_epochs`` w > 0 the rate rises linearly from 0 to
lr over the first w epochs; the decay schedule then runs over the remaining
``epochs - w`` epochs:

- constant:    lr
- step:        lr * gamma ** floor(e / step_epochs)
- exponential: lr * gamma ** e
- cosine:      lr * (1 + cos(pi * e / E)) / 2, reaching 0 at the last epoch
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass(frozen=True)
class Schedule:
    """Learning rate at any point of training; ``rate(epoch_progress)``, epochs as a float >= 0."""

    name: str
    lr: float
    epochs: int
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {', '.join(SCHEDULES)}")

    def rate(self, progress: float) -> float:
        if self.warmup_epochs > 0 and progress < self.warmup_epochs:
            return self.lr * progress / self.warmup_epochs
        e = progress - self.warmup_epochs
        if self.name == "step":
            return self.lr * self.gamma ** math.floor(e / self.step_epochs)
        if self.name == "exponential":
            return self.lr * self.gamma ** e
        if self.name == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(e / span, 1.0)))
        return self.lr
