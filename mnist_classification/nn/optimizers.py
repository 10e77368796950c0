"""Optimisers: each ``update`` applies one step to (param, grad, decayed) triples in place.

L2 weight decay is coupled: ``g + weight_decay * p`` replaces ``g`` for decayed
params (weights, not biases) before the optimiser's own rule. ``lr`` is a
plain attribute so a schedule can set it before every step.

Rules, with g the (decayed) gradient:
- sgd:       p -= lr * g
- momentum:  v = mu * v + g;  p -= lr * v
- nesterov:  v = mu * v + g;  p -= lr * (g + mu * v)
- adam:      m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) g^2;
             p -= lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)

Updates run in the calling thread. Splitting Adam's update over a thread
pool was measured and removed: OpenBLAS's threads, still spinning after the
matrix products, compete with the pool for the 2 cores, and the MLP 784-800-10
training loop ran at 23-25k samples/s with the pool against 37-40k without.
"""

from __future__ import annotations

import numpy as np

Triples = list[tuple[np.ndarray, np.ndarray, bool]]


class Optimizer:
    """Base class: learning rate, weight decay and per-parameter state; subclasses give the rule."""

    #: Number of state arrays (shaped like the parameter) the rule keeps.
    state_arrays = 1

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self._state: dict[int, list[np.ndarray]] = {}

    def update(self, triples: Triples) -> None:
        self.steps += 1
        scalars = self._scalars()
        for index, (param, grad, decayed) in enumerate(triples):
            if index not in self._state:
                # The last state array is scratch space for temporaries.
                self._state[index] = [np.zeros_like(param) for _ in range(self.state_arrays + 1)]
            wd = np.float32(self.weight_decay if decayed else 0.0)
            self._kernel(wd, scalars, param, grad, *self._state[index])

    def _scalars(self) -> tuple:
        """Step-dependent float32 constants shared by every parameter of this step."""
        return (np.float32(self.lr),)

    @staticmethod
    def _decayed(param, grad, scratch, wd) -> np.ndarray:
        """``grad + wd * param`` in ``scratch`` when ``wd`` is set, else ``grad`` itself."""
        if not wd:
            return grad
        np.multiply(param, wd, out=scratch)
        scratch += grad
        return scratch

    def _kernel(self, wd, scalars, param, grad, *state) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    state_arrays = 0

    def _kernel(self, wd, scalars, param, grad, scratch):
        (lr,) = scalars
        g = self._decayed(param, grad, scratch, wd)
        np.multiply(g, lr, out=scratch)
        param -= scratch


class Momentum(Optimizer):
    """Heavy-ball momentum, or Nesterov's accelerated gradient with ``nesterov=True``."""

    state_arrays = 2

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr, weight_decay)
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def _scalars(self):
        return np.float32(self.lr), np.float32(self.momentum)

    def _kernel(self, wd, scalars, param, grad, velocity, decayed_grad, step):
        lr, mu = scalars
        g = self._decayed(param, grad, decayed_grad, wd)
        velocity *= mu
        velocity += g
        if self.nesterov:
            np.multiply(velocity, mu, out=step)
            step += g
            step *= lr
        else:
            np.multiply(velocity, lr, out=step)
        param -= step


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias-corrected moments.

    The moments are kept rescaled, ``M = m / (1 - b1)`` and ``S = s / (1 - b2)``,
    so each step updates them as ``M = b1 M + g`` and ``S = b2 S + g^2`` and the
    constant factors move into the step size and epsilon: ten passes over each
    parameter per step instead of twelve, the same update up to rounding.
    """

    state_arrays = 3

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _scalars(self):
        t = self.steps
        # mhat / (sqrt(shat) + eps) with m = (1 - b1) M, s = (1 - b2) S, c2 = sqrt(1 - b2^t):
        #   = (1 - b1) c2 / ((1 - b1^t) sqrt(1 - b2)) * M / (sqrt(S) + eps c2 / sqrt(1 - b2)).
        correction2 = np.sqrt(1 - self.beta2 ** t)
        root_one_minus_b2 = np.sqrt(1 - self.beta2)
        return (np.float32(self.beta1), np.float32(self.beta2),
                np.float32(self.eps * correction2 / root_one_minus_b2),
                np.float32(self.lr * (1 - self.beta1) * correction2 / ((1 - self.beta1 ** t) * root_one_minus_b2)))

    def _kernel(self, wd, scalars, param, grad, scaled_m, scaled_s, decayed_grad, step):
        b1, b2, eps, step_size = scalars
        g = self._decayed(param, grad, decayed_grad, wd)
        scaled_m *= b1
        scaled_m += g
        np.multiply(g, g, out=step)
        scaled_s *= b2
        scaled_s += step
        np.sqrt(scaled_s, out=step)
        step += eps
        np.divide(scaled_m, step, out=step)
        step *= step_size
        param -= step


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """The optimiser ``name`` (sgd, momentum, nesterov, adam); ``momentum`` is beta1 for adam."""
    if name == "sgd":
        return SGD(lr, weight_decay)
    if name in ("momentum", "nesterov"):
        return Momentum(lr, momentum, weight_decay, nesterov=name == "nesterov")
    if name == "adam":
        return Adam(lr, beta1=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}")
