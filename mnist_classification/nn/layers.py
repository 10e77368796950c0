"""Layers with a ``forward``/``backward`` pair: the base class, dense, dropout, reshapes.

Every layer maps a float32 batch to a float32 batch. ``forward(x, training)``
caches what ``backward`` needs; ``backward(grad_out)`` fills ``self.grads`` (same
keys and shapes as ``self.params``) and returns the gradient with respect to
the layer's input. ``buffers`` hold saved, non-trainable state (for example
batch-norm running statistics). ``config()`` is the JSON-serialisable
architecture from which :func:`mnist_classification.nn.network.layer_from_config`
rebuilds the layer; layers with params or buffers take them back through their
``arrays`` argument (see :meth:`Layer.adopt`) instead of initialising new ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mnist_classification.nn.initialisation import check_scheme, init_weights

FLOAT = np.float32


class Layer:
    """Base class: a layer without parameters that passes its input through."""

    kind = "identity"
    #: Names in ``params`` that L2 weight decay applies to (weights, not biases).
    decayed: tuple[str, ...] = ()
    #: Names of the arrays (see :meth:`array_shapes`) kept in ``buffers`` rather than ``params``.
    buffer_names: tuple[str, ...] = ()
    #: Whether the layer computes on blocks of the batch, one core each (see :mod:`.parallel`).
    splits_batch = False

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        #: False for the first layer of a network: its input gradient is never used.
        self.needs_input_grad = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return x

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one output sample for one input sample of ``input_shape``."""
        return input_shape

    def config(self) -> dict:
        return {"type": self.kind}

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every param and buffer, from the layer's config alone (nothing is allocated)."""
        return {}

    def adopt(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Hold ``arrays`` (one per name of :meth:`array_shapes`) as params and buffers, without copying.

        Gradients are zeroed. Raises ValueError if an array is missing, unexpected or misshapen.
        """
        shapes = self.array_shapes()
        missing, extra = sorted(shapes.keys() - arrays.keys()), sorted(arrays.keys() - shapes.keys())
        if missing or extra:
            problems = [f"{label} arrays {', '.join(names)}" for label, names in (("missing", missing),
                                                                                ("unexpected", extra)) if names]
            raise ValueError("; ".join(problems))
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                raise ValueError(f"{name} has shape {arrays[name].shape}; the layer needs {shape}")
        self.params = {name: arrays[name] for name in shapes if name not in self.buffer_names}
        self.buffers = {name: arrays[name] for name in self.buffer_names}
        self.grads = {name: np.zeros(p.shape, p.dtype) for name, p in self.params.items()}


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``; x (N, in), W (in, out), b (out,), y (N, out)."""

    kind = "dense"
    decayed = ("W",)

    def __init__(self, in_features: int, out_features: int, init: str = "he",
                 rng: np.random.Generator | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.init = int(in_features), int(out_features), check_scheme(init)
        if arrays is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            arrays = {"W": init_weights(init, (self.in_features, self.out_features), self.in_features,
                                        self.out_features, rng),
                      "b": np.zeros(self.out_features, dtype=FLOAT)}
        self.adopt(arrays)
        self._x: np.ndarray | None = None

    def forward(self, x, training=False):
        self._x = x
        y = x @ self.params["W"]
        y += self.params["b"]
        return y

    def backward(self, grad_out):
        np.matmul(self._x.T, grad_out, out=self.grads["W"])
        np.sum(grad_out, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        return grad_out @ self.params["W"].T

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Dense expects ({self.in_features},) samples, got {tuple(input_shape)}")
        return (self.out_features,)

    def config(self):
        return {"type": self.kind, "in_features": self.in_features,
                "out_features": self.out_features, "init": self.init}

    def array_shapes(self):
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale the rest."""

    kind = "dropout"

    def __init__(self, rate: float, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.rate = float(rate)
        if not 0 <= self.rate < 1:
            raise ValueError(f"rate must be in [0, 1), not {rate}")
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=FLOAT) >= self.rate
        self._mask = keep * FLOAT(1 / (1 - self.rate))
        return x * self._mask

    def backward(self, grad_out):
        return grad_out if self._mask is None else grad_out * self._mask

    def config(self):
        return {"type": self.kind, "rate": self.rate}


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    kind = "flatten"

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        return grad_out.reshape(self._shape)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)


class AddChannel(Layer):
    """(N, H, W) -> (N, 1, H, W): grey images as one-channel input for convolutions."""

    kind = "add_channel"

    def forward(self, x, training=False):
        return x[:, None, :, :]

    def backward(self, grad_out):
        return grad_out[:, 0, :, :]

    def output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"AddChannel expects (H, W) samples, got {tuple(input_shape)}")
        return (1, *input_shape)
