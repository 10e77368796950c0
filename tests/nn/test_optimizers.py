"""Optimiser steps against values computed by hand, and the schedules."""

import math

import numpy as np
import pytest

from mnist_classification.nn.optimizers import SGD, Adam, Momentum, make_optimizer
from mnist_classification.nn.schedules import Schedule


def _run(optimizer, grads, param=(1.0, -2.0), decayed=False):
    p = np.array(param, dtype=np.float32)
    for g in grads:
        optimizer.update([(p, np.array(g, dtype=np.float32), decayed)])
    return p


def test_sgd_step():
    # p - lr * g = [1 - 0.1 * 0.5, -2 - 0.1 * 0.5]
    np.testing.assert_allclose(_run(SGD(0.1), [[0.5, 0.5]]), [0.95, -2.05], rtol=1e-6)


def test_sgd_weight_decay_applies_only_to_decayed_params():
    # g + wd * p = [0.5 + 0.1, 0.5 - 0.2] = [0.6, 0.3]; p - 0.1 * that = [0.94, -2.03]
    np.testing.assert_allclose(_run(SGD(0.1, weight_decay=0.1), [[0.5, 0.5]], decayed=True), [0.94, -2.03],
                               rtol=1e-6)
    np.testing.assert_allclose(_run(SGD(0.1, weight_decay=0.1), [[0.5, 0.5]], decayed=False), [0.95, -2.05],
                               rtol=1e-6)


def test_momentum_two_steps():
    # v1 = 0.5 -> p = 1 - 0.05 = 0.95; v2 = 0.9 * 0.5 + 0.5 = 0.95 -> p = 0.95 - 0.095 = 0.855
    p = _run(Momentum(0.1, momentum=0.9), [[0.5], [0.5]], param=(1.0,))
    np.testing.assert_allclose(p, [0.855], rtol=1e-6)


def test_nesterov_two_steps():
    # v1 = 0.5, step = 0.5 + 0.9 * 0.5 = 0.95 -> p = 0.905
    # v2 = 0.95, step = 0.5 + 0.9 * 0.95 = 1.355 -> p = 0.905 - 0.1355 = 0.7695
    p = _run(Momentum(0.1, momentum=0.9, nesterov=True), [[0.5], [0.5]], param=(1.0,))
    np.testing.assert_allclose(p, [0.7695], rtol=1e-6)


def test_adam_two_steps():
    # Step 1: m = 0.05, s = 0.00025, mhat = 0.5, shat = 0.25 -> step 0.1 * 0.5 / 0.5 = 0.1 -> p = 0.9
    # Step 2 (g = -1): m = 0.045 - 0.1 = -0.055, mhat = -0.055 / 0.19 = -0.2894737
    #   s = 0.00024975 + 0.001 = 0.00124975, shat = 0.00124975 / 0.001999 = 0.6251876, sqrt = 0.7906880
    #   step = 0.1 * -0.2894737 / 0.7906880 = -0.0366104 -> p = 0.9366104
    adam = Adam(0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    np.testing.assert_allclose(_run(adam, [[0.5]], param=(1.0,)), [0.9], rtol=1e-6)
    p = _run(Adam(0.1), [[0.5], [-1.0]], param=(1.0,))
    np.testing.assert_allclose(p, [0.9366104], rtol=1e-5)


def test_adam_with_weight_decay_uses_decayed_gradient():
    # g' = 0.5 + 0.1 * 1 = 0.6; first Adam step is lr * sign(g') -> 0.9
    np.testing.assert_allclose(_run(Adam(0.1, weight_decay=0.1), [[0.5]], param=(1.0,), decayed=True), [0.9],
                               rtol=1e-6)


def test_optimisers_keep_float32_and_state_per_param():
    opt = make_optimizer("adam", 0.01, 0.9, 0.0)
    a, b = np.ones(3, np.float32), np.ones((2, 2), np.float32)
    for _ in range(3):
        opt.update([(a, np.ones_like(a), True), (b, -np.ones_like(b), False)])
    assert a.dtype == b.dtype == np.float32
    assert np.all(a < 1) and np.all(b > 1)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_every_optimiser_minimises_a_quadratic(name):
    opt = make_optimizer(name, 0.05, 0.9, 0.0)
    p = np.array([3.0, -4.0], dtype=np.float32)
    for _ in range(500):
        opt.update([(p, 2 * p, False)])  # gradient of |p|^2
    assert np.linalg.norm(p) < 0.05


def test_unknown_optimiser():
    with pytest.raises(ValueError):
        make_optimizer("rmsprop", 0.1, 0.9, 0.0)


def test_constant_schedule():
    s = Schedule("constant", 0.1, epochs=10)
    assert s.rate(0) == s.rate(7.5) == 0.1


def test_step_schedule():
    s = Schedule("step", 0.1, epochs=30, step_epochs=10, gamma=0.5)
    assert s.rate(9.99) == pytest.approx(0.1)
    assert s.rate(10) == pytest.approx(0.05)
    assert s.rate(25) == pytest.approx(0.025)


def test_exponential_schedule():
    s = Schedule("exponential", 0.1, epochs=10, gamma=0.9)
    assert s.rate(2) == pytest.approx(0.1 * 0.81)
    assert s.rate(0.5) == pytest.approx(0.1 * math.sqrt(0.9))


def test_cosine_schedule():
    s = Schedule("cosine", 0.1, epochs=10)
    assert s.rate(0) == pytest.approx(0.1)
    assert s.rate(5) == pytest.approx(0.05)
    assert s.rate(10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_then_cosine_over_the_remaining_epochs():
    s = Schedule("cosine", 0.1, epochs=11, warmup_epochs=1)
    assert s.rate(0.25) == pytest.approx(0.025)
    assert s.rate(1) == pytest.approx(0.1)
    assert s.rate(6) == pytest.approx(0.05)
    assert s.rate(11) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule():
    with pytest.raises(ValueError):
        Schedule("linear", 0.1, epochs=3)

