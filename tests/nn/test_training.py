"""The training loop: learning, early stopping with best-weight restore, divergence."""

import numpy as np
import pytest

from mnist_classification.infra.params import validate
from mnist_classification.nn.losses import SoftmaxCrossEntropy
from mnist_classification.nn.network import build_network
from mnist_classification.nn.optimizers import make_optimizer
from mnist_classification.nn.schedules import Schedule
from mnist_classification.nn.training import TrainingDiverged, choose_mirror_average, evaluate, train
from mnist_classification.reports.history import read_history, write_history

CLASSES = [str(i) for i in range(10)]


def _blobs(n, seed):
    """Ten well-separated classes of 8x8 'images': class c lights up row c % 8 plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.normal(0, 0.3, (n, 8, 8)).astype(np.float32)
    images[np.arange(n), labels % 8, :] += 2.0
    images[np.arange(n), :, labels // 8] += 2.0
    return images, labels.astype(np.uint8)


def _setup(lr=0.01, optimizer="adam", **train_overrides):
    p = validate({"train": {"hidden": [32], "lr": lr, "optimizer": optimizer, **train_overrides}})["train"]
    net = build_network(p, (8, 8), CLASSES, 0.0, 1.0)
    opt = make_optimizer(p["optimizer"], p["lr"], p["momentum"], p["weight_decay"])
    return net, opt, Schedule(p["schedule"], p["lr"], p["epochs"])


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("momentum", 0.05), ("nesterov", 0.05), ("adam", 0.01)])
def test_learns_separable_data(optimizer, lr):
    (x, y), (vx, vy) = _blobs(600, 0), _blobs(200, 1)
    net, opt, schedule = _setup(lr, optimizer, epochs=5)
    result = train(net, opt, schedule, x, y, vx, vy, epochs=5, batch_size=32, patience=0,
                   rng=np.random.default_rng(0), progress=False)
    assert len(result.history) == 5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate(net, vx, vy)[1] > 0.95


def test_history_rows_round_trip_through_the_history_file(tmp_path):
    (x, y), (vx, vy) = _blobs(200, 0), _blobs(100, 1)
    net, opt, schedule = _setup(epochs=2)
    result = train(net, opt, schedule, x, y, vx, vy, epochs=2, batch_size=32, patience=0,
                   rng=np.random.default_rng(0), progress=False)
    write_history(tmp_path / "history.csv", result.history)
    rows = read_history(tmp_path / "history.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    for written, read in zip(result.history, rows):
        assert set(read) == set(written)
        for key, value in written.items():
            assert read[key] == pytest.approx(value, rel=1e-5)


def test_same_seed_gives_identical_weights():
    (x, y), (vx, vy) = _blobs(300, 0), _blobs(100, 1)
    states = []
    for _ in range(2):
        net, opt, schedule = _setup(dropout=0.3, epochs=2)
        train(net, opt, schedule, x, y, vx, vy, 2, 32, 0, np.random.default_rng(5), progress=False)
        states.append(net.state())
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_early_stopping_restores_the_best_epoch():
    (x, y), (vx, vy) = _blobs(300, 0), _blobs(100, 1)
    vy_noise = np.random.default_rng(3).integers(0, 10, len(vy)).astype(np.uint8)  # unlearnable validation
    net, opt, schedule = _setup(epochs=30)
    result = train(net, opt, schedule, x, y, vx, vy_noise, 30, 32, 2, np.random.default_rng(0), progress=False)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2
    best = result.history[result.best_epoch - 1]["val_accuracy"]
    assert evaluate(net, vx, vy_noise)[1] == pytest.approx(best)
    assert best == max(row["val_accuracy"] for row in result.history)


def test_divergence_names_the_epoch_and_suggests_a_smaller_rate():
    (x, y), (vx, vy) = _blobs(300, 0), _blobs(100, 1)
    net, opt, schedule = _setup(lr=1e6, optimizer="sgd", schedule="constant", epochs=3)
    with pytest.raises(TrainingDiverged) as error:
        train(net, opt, schedule, x, y, vx, vy, 3, 32, 0, np.random.default_rng(0), progress=False)
    message = str(error.value)
    assert "diverged at epoch 1" in message and "smaller learning rate than train.lr=1e+06" in message


def test_label_smoothing_steps_with_the_smoothed_gradient_and_softens_confidence():
    (x, y), (vx, vy) = _blobs(64, 0), _blobs(64, 1)
    # One SGD step on one batch of 64 = the step a hand-made loop takes with the smoothed loss.
    net, opt, schedule = _setup(0.1, "sgd", epochs=1, warmup_epochs=0, schedule="constant")
    manual, manual_opt, _ = _setup(0.1, "sgd", epochs=1, warmup_epochs=0, schedule="constant")
    order = np.random.default_rng(0).permutation(64)
    train(net, opt, schedule, x, y, vx, vy, epochs=1, batch_size=64, patience=0,
          rng=np.random.default_rng(0), progress=False, label_smoothing=0.2)
    loss_fn = SoftmaxCrossEntropy(0.2)
    loss_fn.forward(manual.forward(x[order], training=True), y[order].astype(np.intp))
    manual.backward(loss_fn.backward())
    manual_opt.update(manual.trainable())
    for key, value in manual.state().items():
        np.testing.assert_allclose(net.state()[key], value, rtol=1e-6, atol=1e-7)
    # Trained longer, smoothed targets keep the top probability below 1 - e + e / K on average.
    (x, y), (vx, vy) = _blobs(256, 0), _blobs(128, 1)
    confidences = []
    for smoothing in (0.0, 0.3):
        net, opt, schedule = _setup(0.01, epochs=10)
        train(net, opt, schedule, x, y, vx, vy, epochs=10, batch_size=16, patience=0,
              rng=np.random.default_rng(0), progress=False, label_smoothing=smoothing)
        confidences.append(net.predict_proba(vx).max(axis=1).mean())
    assert confidences[1] < 0.7 + 0.03 + 0.01 and confidences[0] > 0.85  # measured 0.70 and 0.88


class _Mirrorable:
    """A stand-in network (mirror_average off) whose logits for the images [[[0, 1]], [[2, 3]]] are ``plain``
    and for their mirrors such that the average of the two is ``averaged``."""

    IMAGES = np.array([[[0, 1]], [[2, 3]]], np.float32)

    def __init__(self, plain, averaged):
        self.mirror_average = False
        self._plain = np.array(plain, np.float32)
        self._mirrors = 2 * np.array(averaged, np.float32) - self._plain

    def predict_logits(self, images):
        assert not self.mirror_average  # the chooser averages the two passes itself
        return (self._plain if np.array_equal(images, self.IMAGES) else self._mirrors).copy()


@pytest.mark.parametrize("plain,mirrored,kept", [
    ([[2, 0], [0, 1]], [[2, 0], [1, 0]], False),   # mirrored gets one wrong: accuracy 1/2 < 1
    ([[0, 2], [0, 1]], [[2, 0], [0, 1]], True),    # mirrored gets one more right
    ([[2, 0], [0, 1]], [[4, 0], [0, 2]], True),    # same accuracy, lower loss
    ([[4, 0], [0, 2]], [[2, 0], [0, 1]], False),   # same accuracy, higher loss
    ([[2, 0], [0, 1]], [[2, 0], [0, 1]], False),   # no difference: stays off
])
def test_mirror_average_is_kept_only_when_validation_says_it_helps(plain, mirrored, kept):
    net = _Mirrorable(plain, mirrored)
    summary, logits = choose_mirror_average(net, _Mirrorable.IMAGES, np.array([0, 1]))
    assert net.mirror_average is kept and summary["kept"] is kept
    assert summary["val_accuracy"]["plain"] == np.mean(np.argmax(plain, axis=1) == [0, 1])
    assert summary["val_accuracy"]["mirrored"] == np.mean(np.argmax(mirrored, axis=1) == [0, 1])
    loss = SoftmaxCrossEntropy()
    assert summary["val_loss"]["mirrored"] == round(loss.forward(np.array(mirrored, np.float32), np.array([0, 1])), 6)
    np.testing.assert_array_equal(logits, mirrored if kept else plain)  # the chosen setting's logits


@pytest.mark.parametrize("prefer_mirrors", [False, True])
def test_the_chosen_logits_are_those_predict_logits_gives(prefer_mirrors):
    """Two passes (images, mirrors) give bit for bit what predict_logits gives with the chosen setting."""
    train = validate({"train": {"model": "cnn", "hidden": [8], "cnn": {"channels": [4]}}})["train"]
    net = build_network(train, (28, 28), [str(k) for k in range(10)], 0.0, 1.0)
    x = np.random.default_rng(0).standard_normal((200, 28, 28)).astype(np.float32)
    plain = net.predict_logits(x)
    averaged = (plain + net.predict_logits(x[:, :, ::-1].copy())) / 2
    assert (plain.argmax(axis=1) != averaged.argmax(axis=1)).any()  # so the labels below decide
    labels = (averaged if prefer_mirrors else plain).argmax(axis=1)
    summary, logits = choose_mirror_average(net, x, labels)
    assert summary["kept"] is net.mirror_average is prefer_mirrors
    np.testing.assert_array_equal(logits, net.predict_logits(x))
