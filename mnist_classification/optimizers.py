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
"""

from __future__ import annotations

import numpy as np

Triples = list[tuple[np.ndarray, np.ndarray, bool]]


class Optimizer:
    """Base class: holds the learning rate, weight decay and per-parameter state."""

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0

    def _gradient(self, param: np.ndarray, grad: np.ndarray, decayed: bool, scratch: np.ndarray) -> np.ndarray:
        """The gradient with L2 decay added, written into ``scratch`` when decay applies."""
        if decayed and self.weight_decay:
            np.multiply(param, np.float32(self.weight_decay), out=scratch)
            scratch += grad
            return scratch
        return grad

    def update(self, triples: Triples) -> None:
        self.steps += 1
        for index, (param, grad, decayed) in enumerate(triples):
            self._step(index, param, grad, decayed)

    def _step(self, index: int, param: np.ndarray, grad: np.ndarray, decayed: bool) -> None:
        raise NotImplementedError

    def _buffers(self, index: int, param: np.ndarray, count: int) -> list[np.ndarray]:
        """``count`` zero arrays shaped like ``param``, created once per parameter."""
        store = self.__dict__.setdefault("_state", {})
        if index not in store:
            store[index] = [np.zeros_like(param) for _ in range(count)]
        return store[index]


class SGD(Optimizer):
    def _step(self, index, param, grad, decayed):
        decayed_grad, step = self._buffers(index, param, 2)
        g = self._gradient(param, grad, decayed, decayed_grad)
        np.multiply(g, np.float32(self.lr), out=step)
        param -= step


class Momentum(Optimizer):
    """Heavy-ball momentum, or Nesterov's accelerated gradient with ``nesterov=True``."""

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr, weight_decay)
        self.momentum = float(momentum)
        self.nesterov = nesterov

    def _step(self, index, param, grad, decayed):
        velocity, decayed_grad, step = self._buffers(index, param, 3)
        g = self._gradient(param, grad, decayed, decayed_grad)
        mu = np.float32(self.momentum)
        velocity *= mu
        velocity += g
        if self.nesterov:
            np.multiply(velocity, mu, out=step)
            step += g
            step *= np.float32(self.lr)
        else:
            np.multiply(velocity, np.float32(self.lr), out=step)
        param -= step


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias-corrected moments."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _step(self, index, param, grad, decayed):
        m, s, decayed_grad, step = self._buffers(index, param, 4)
        g = self._gradient(param, grad, decayed, decayed_grad)
        m *= np.float32(self.beta1)
        np.multiply(g, np.float32(1 - self.beta1), out=step)
        m += step
        s *= np.float32(self.beta2)
        np.multiply(g, g, out=step)
        step *= np.float32(1 - self.beta2)
        s += step
        t = self.steps
        # Both bias corrections folded into the step size and epsilon:
        # mhat / (sqrt(shat) + eps) = m * c2 / (1 - b1^t) / (sqrt(s) + eps * c2), c2 = sqrt(1 - b2^t).
        correction2 = np.sqrt(1 - self.beta2 ** t)
        np.sqrt(s, out=step)
        step += np.float32(self.eps * correction2)
        np.divide(m, step, out=step)
        step *= np.float32(self.lr * correction2 / (1 - self.beta1 ** t))
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
