"""Softmax cross-entropy: value, numerical gradient and stability."""

import numpy as np
import pytest
from gradcheck import numerical_gradient

from mnist_classification.nn.losses import SoftmaxCrossEntropy, softmax


def test_value_on_a_known_example():
    # logits [0, ln 3] -> p = [1/4, 3/4]; labels [1] -> loss = -ln(3/4)
    loss = SoftmaxCrossEntropy().forward(np.array([[0.0, np.log(3.0)]]), np.array([1]))
    assert abs(loss - (-np.log(0.75))) < 1e-12


def test_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    analytic = loss_fn.backward()
    numeric = numerical_gradient(lambda: SoftmaxCrossEntropy().forward(logits, labels), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_huge_logits_stay_finite():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32)
    loss_fn = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is harmless
        loss = loss_fn.forward(logits, np.array([0, 2]))
        grad = loss_fn.backward()
    assert np.isfinite(loss) and abs(loss - 2500.0) < 1e-3  # second row: 1e4 - 5e3 = 5e3 nats, mean 2.5e3
    assert np.all(np.isfinite(grad)) and grad.dtype == np.float32


def test_softmax_rows_sum_to_one():
    p = softmax(np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32) * 50)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    assert p.dtype == np.float32


def test_label_smoothing_value_on_a_known_example():
    # p = [1/4, 3/4], label 1, e = 0.2: target [0.1, 0.9] -> loss = -(0.1 ln 1/4 + 0.9 ln 3/4)
    loss = SoftmaxCrossEntropy(0.2).forward(np.array([[0.0, np.log(3.0)]]), np.array([1]))
    assert abs(loss - -(0.1 * np.log(0.25) + 0.9 * np.log(0.75))) < 1e-12


def test_label_smoothing_gradient_matches_central_differences():
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    loss_fn = SoftmaxCrossEntropy(0.1)
    loss_fn.forward(logits, labels)
    analytic = loss_fn.backward()
    numeric = numerical_gradient(lambda: SoftmaxCrossEntropy(0.1).forward(logits, labels), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    # Rows still sum to zero: the smoothed target is a distribution too.
    np.testing.assert_allclose(analytic.sum(axis=1), 0, atol=1e-12)


def test_zero_smoothing_is_the_plain_loss_bit_for_bit():
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 10, 64)
    plain, smoothed = SoftmaxCrossEntropy(), SoftmaxCrossEntropy(0.0)
    assert plain.forward(logits, labels) == smoothed.forward(logits, labels)
    np.testing.assert_array_equal(plain.backward(), smoothed.backward())


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_label_smoothing_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        SoftmaxCrossEntropy(bad)
