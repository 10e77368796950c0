"""Weight initialisation: He (Kaiming) normal for ReLU-like units, Xavier (Glorot) uniform otherwise."""

from __future__ import annotations

import numpy as np

SCHEMES = ("he", "xavier")


def check_scheme(scheme: str) -> str:
    """``scheme`` if it names an initialisation, else ValueError."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return scheme


def init_weights(scheme: str, shape: tuple[int, ...], fan_in: int, fan_out: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Return float32 weights of ``shape``.

    he:     N(0, 2 / fan_in)                      (He et al. 2015)
    xavier: U(-a, a), a = sqrt(6 / (fan_in + fan_out))  (Glorot & Bengio 2010)
    """
    check_scheme(scheme)
    if scheme == "he":
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
    limit = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))  # xavier
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)
