"""The training-memory estimate: it counts what build_network builds, and refuses params that cannot fit."""

import pytest

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn import footprint
from mnist_classification.nn.footprint import check_training_memory, training_footprint
from mnist_classification.nn.network import build_network

CLASSES = [str(d) for d in range(10)]


def _train(**overrides):
    return validate({"train": overrides})["train"]


@pytest.mark.parametrize("overrides", [
    {},
    {"hidden": [16, 8], "dropout": 0.0},
    {"model": "cnn", "hidden": [7], "cnn": {"channels": [2, 3, 5]}},
    {"model": "cnn", "hidden": [16, 8], "cnn": {"channels": [3, 4], "kernel_size": 5, "batch_norm": False}},
], ids=["default MLP", "two hidden", "three conv blocks", "5x5 kernels without batch norm"])
def test_parameter_count_matches_the_network_built(overrides):
    train = _train(**overrides)
    estimate = training_footprint(train, (28, 28), 10)
    network = build_network(train, (28, 28), CLASSES, 0.1, 0.3)
    assert estimate.conv_parameters + estimate.dense_parameters == network.count_parameters()
    conv = sum(p.size for layer in network.layers if layer.kind in ("conv2d", "batchnorm2d")
               for p in layer.params.values())
    assert estimate.conv_parameters == conv


def test_default_mlp_by_hand():
    estimate = training_footprint(_train(), (28, 28), 10)
    parameters = 784 * 800 + 800 + 800 * 10 + 10
    # params, grads, Adam's 3 state arrays + scratch, 2 best-weight copies; 4 bytes each
    assert estimate.weights_bytes == 4 * (2 + 4 + 2) * parameters
    assert estimate.activation_bytes == 4 * 128 * (784 + 8 * (800 + 10))


@pytest.mark.parametrize("overrides, key", [
    ({"hidden": [100_000_000]}, "train.hidden is [100000000]"),
    ({"batch_size": 10**9}, "train.batch_size is 1000000000"),
    ({"model": "cnn", "hidden": [8], "cnn": {"channels": [100_000]}}, "train.cnn.channels is [100000]"),
])
def test_params_too_large_for_memory_name_their_key(overrides, key):
    with pytest.raises(PipelineError) as info:
        check_training_memory(_train(**overrides), (28, 28), 10)
    message = str(info.value)
    assert message.startswith(f"params.yaml: {key}: training would need at least ")
    assert "more than the" in message and f"choose a smaller {key.split()[0]}" in message


def test_what_fits_passes_and_the_limit_is_the_memory_available(monkeypatch):
    train = _train()
    needed = check_training_memory(train, (28, 28), 10).total
    monkeypatch.setattr(footprint, "available_memory", lambda: needed - 1)
    with pytest.raises(PipelineError, match=r"train.hidden is \[800\]: training would need at least 23\.0 MiB"):
        check_training_memory(train, (28, 28), 10)
    monkeypatch.setattr(footprint, "available_memory", lambda: None)  # unknown: no check
    check_training_memory(train, (28, 28), 10)
