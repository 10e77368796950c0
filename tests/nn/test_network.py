"""Building networks from params, and model files: round trip and refusal of bad files."""

import json
import re
import tracemalloc

import numpy as np
import pytest
from model_files import add_pickled_payload, read_arrays

from mnist_classification.infra import atomic
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.layers import Dense
from mnist_classification.nn.losses import softmax
from mnist_classification.nn.network import FORMAT, build_network, load_network

CLASSES = [str(i) for i in range(10)]


def _mlp(**overrides):
    train = validate({"train": {"hidden": [16, 8], **overrides}})["train"]
    return build_network(train, (28, 28), CLASSES, 0.13, 0.31)


def test_mlp_architecture_follows_params():
    net = _mlp(activation="tanh", dropout=0.5)
    kinds = [layer.kind for layer in net.layers]
    assert kinds == ["flatten", "dense", "tanh", "dropout", "dense", "tanh", "dropout", "dense"]
    assert net.count_parameters() == 784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert [layer.kind for layer in _mlp(dropout=0.0).layers].count("dropout") == 0


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = _mlp(seed=1), _mlp(seed=1), _mlp(seed=2)
    assert all(np.array_equal(a.state()[k], b.state()[k]) for k in a.state())
    assert not np.array_equal(a.state()["1.W"], c.state()["1.W"])


def test_round_trip_is_exact_and_deterministic(tmp_path):
    net = _mlp()
    net.save(tmp_path / "a.npz")
    net.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_network(tmp_path / "a.npz")
    x = np.random.default_rng(0).standard_normal((4, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(net.predict_proba(x), loaded.predict_proba(x))
    assert loaded.classes == CLASSES and loaded.mean == 0.13 and loaded.std == 0.31
    with np.load(tmp_path / "a.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.npz"
    _mlp().save(path)
    return path


def test_missing_model(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_network(tmp_path / "nope.npz")


def test_truncated_model(model_file):
    model_file.write_bytes(model_file.read_bytes()[:2000])
    with pytest.raises(PipelineError, match="truncated or not a readable .npz archive"):
        load_network(model_file)


def test_tampered_weights_fail_the_checksum(model_file):
    arrays = read_arrays(model_file)
    arrays["1.W"][0, 0] += 1
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match="do not match the checksum"):
        load_network(model_file)


def _edit_header(path, edit) -> None:
    """Rewrite the model file at ``path`` with ``edit(header)`` applied to its architecture (checksum kept)."""
    arrays = read_arrays(path)
    header = json.loads(str(arrays["architecture"]))
    edit(header)
    arrays["architecture"] = np.array(json.dumps(header))
    atomic.save_npz(path, arrays)


def _set(path, value):
    """An edit that sets the header value at ``path`` (a tuple of keys and indices)."""
    def edit(header):
        for key in path[:-1]:
            header = header[key]
        header[path[-1]] = value
    return edit


# Each edit, and the message that names what is wrong (after "model file <path> is invalid: ").
BAD_HEADERS = {
    "weights of another shape": (_set(("layers", 1, "out_features"), 17),
                                 r"layer 1 \(dense\): W has shape \(784, 16\); the layer needs \(784, 17\)"),
    "input the first layer cannot take": (_set(("input_shape",), [10, 10]),
                                          r"layer 1 \(dense\): Dense expects \(784,\) samples, got \(100,\)"),
    "unknown layer type": (_set(("layers", 2, "type"), "os.system"), "layer 2: unknown layer type 'os.system'"),
    "unknown key": (_set(("extra",), 1), r"unknown keys \['extra'\]"),
    "unknown layer key": (_set(("layers", 1, "activation"), "relu"), r"layer 1 \(dense\): unknown key 'activation'"),
    "size as a string": (_set(("layers", 1, "in_features"), "784"),
                         r"layer 1 \(dense\): in_features is '784'; expected a whole number from 1 to 2147483647"),
    "negative size": (_set(("layers", 4, "in_features"), -16), "in_features is -16; expected a whole number"),
    "huge size": (_set(("layers", 1, "out_features"), 10**40), "out_features is 1000000000"),
    "NaN mean": (_set(("normalisation", "mean"), float("nan")), "normalisation is .*expected finite mean and std"),
    "infinite std": (_set(("normalisation", "std"), float("inf")), "normalisation is .*expected finite mean and std"),
    "dropout rate above 1": (_set(("layers", 3, "rate"), 1.5), r"layer 3 \(dropout\): rate must be in \[0, 1\)"),
    "no classes": (_set(("classes",), []), "classes is \\[\\]; expected a non-empty list"),
    "too few classes": (_set(("classes",), ["a", "b"]), r"the layers produce \(10,\) outputs for 2 classes"),
    "a layer config that is a list": (_set(("layers", 0), [[[]]]), r"layer 0: unknown layer type \[\[\[\]\]\]"),
    **{f"temperature {value!r}": (_set(("temperature",), value),
                                  f"^temperature is {re.escape(shown)}; expected a finite number from 0.001 to 1000$")
       for value, shown in ((0, "0"), (-2.5, "-2.5"), (float("nan"), "nan"), (float("inf"), "inf"),
                            (1e4, "10000.0"), (0.0009, "0.0009"), ("2.5", "'2.5'"), (True, "True"),
                            (None, "None"), ([2.5], "[2.5]"))},
    **{f"mirror_average {value!r}": (_set(("mirror_average",), value),
                                     f"^mirror_average is {re.escape(shown)}; expected true or false$")
       for value, shown in ((1, "1"), ("true", "'true'"), (None, "None"))},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_architecture(model_file, case):
    edit, message = BAD_HEADERS[case]
    _edit_header(model_file, edit)
    with pytest.raises(PipelineError) as info:
        load_network(model_file)
    prefix = f"model file {model_file} is invalid: "
    assert str(info.value).startswith(prefix)
    assert re.search(message, str(info.value).removeprefix(prefix)), str(info.value)


def test_architecture_nested_too_deeply(model_file):
    arrays = read_arrays(model_file)
    arrays["architecture"] = np.array('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match="is invalid: its architecture is nested too deeply"):
        load_network(model_file)


def test_architecture_entry_too_large_is_not_even_read(model_file):
    arrays = read_arrays(model_file)
    arrays["architecture"] = np.array(" " * (1 << 20))
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match="is invalid: its architecture entry is 4194304 bytes; expected at most"):
        load_network(model_file)


def test_layers_that_do_not_chain_are_refused_even_with_matching_weights_and_checksum(tmp_path):
    net = _mlp()
    net.layers[1] = Dense(784, 17)  # its arrays fit its config, but the next Dense takes 16 inputs
    net.save(tmp_path / "model.npz")
    with pytest.raises(PipelineError, match=r"is invalid: layer 4 \(dense\): Dense expects \(16,\) samples, "
                                            r"got \(17,\)"):
        load_network(tmp_path / "model.npz")


@pytest.mark.parametrize("width", [30_000, 10**6])
def test_huge_layers_declared_without_weights_are_refused_before_anything_is_allocated(tmp_path, width):
    """The reported case: a 2.5 KB file declaring 784-30000-30000-10 (or 10^6 x 10^6) and holding no weights
    ran for 36 s and reached 7.2 GB (or ran out of memory) building the layers before it was refused."""
    header = {"format": FORMAT, "input_shape": [28, 28], "classes": CLASSES,
              "normalisation": {"mean": 0.13, "std": 0.31}, "sha256": "0" * 64,
              "layers": [{"type": "flatten"}, {"type": "dense", "in_features": 784, "out_features": width},
                         {"type": "relu"}, {"type": "dense", "in_features": width, "out_features": width},
                         {"type": "relu"}, {"type": "dense", "in_features": width, "out_features": 10}]}
    path = tmp_path / "model.npz"
    atomic.save_npz(path, {"architecture": np.array(json.dumps(header))})
    tracemalloc.start()  # NumPy reports its array allocations to tracemalloc
    try:
        with pytest.raises(PipelineError, match=r"is invalid: layer 1 \(dense\): missing arrays W, b$"):
            load_network(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_loaded_layers_hold_the_stored_arrays(model_file):
    stored = read_arrays(model_file)
    network = load_network(model_file)
    state = network.state()
    assert state.keys() == stored.keys() - {"architecture"}
    assert all(np.array_equal(state[key], stored[key]) for key in state)


def test_pickled_object_is_refused_and_never_executed(model_file, tmp_path):
    marker = tmp_path / "executed"
    add_pickled_payload(model_file, marker)
    with pytest.raises(PipelineError, match="pickled objects"):
        load_network(model_file)
    assert not marker.exists()


def test_not_a_model_at_all(tmp_path):
    path = tmp_path / "model.npz"
    atomic.save_npz(path, {"weights": np.zeros(3, np.float32)})
    with pytest.raises(PipelineError, match="no 'architecture' entry"):
        load_network(path)


def test_refuses_to_save_nan_weights(tmp_path):
    net = _mlp()
    net.layers[1].params["W"][0, 0] = np.nan
    with pytest.raises(PipelineError, match="NaN"):
        net.save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


def test_temperature_round_trips_and_divides_the_logits(tmp_path):
    net = _mlp()
    net.layers[-1].params["W"] *= 20  # spread the logits so that the temperature matters
    net.temperature = 2.5
    net.save(tmp_path / "model.npz")
    loaded = load_network(tmp_path / "model.npz")
    assert loaded.temperature == 2.5
    x = np.random.default_rng(0).standard_normal((6, 28, 28)).astype(np.float32)
    logits = loaded.predict_logits(x).astype(np.float64)
    expected = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.predict_proba(x), expected, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict_proba(x).argmax(axis=1), logits.argmax(axis=1))
    assert np.abs(softmax(logits) - expected).max() > 0.05


def test_a_model_file_without_a_temperature_loads_with_temperature_one(model_file):
    """Files written before temperature scaling have no ``temperature`` key: their probabilities are unchanged."""
    _edit_header(model_file, lambda header: header.pop("temperature"))
    loaded = load_network(model_file)
    assert loaded.temperature == 1.0
    x = np.random.default_rng(0).standard_normal((4, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), softmax(loaded.predict_logits(x)))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), 1e4])
def test_refuses_to_save_a_temperature_out_of_range(tmp_path, temperature):
    net = _mlp()
    net.temperature = temperature
    with pytest.raises(PipelineError, match="temperature .* is not a finite number from 0.001 to 1000"):
        net.save(tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


def test_mirror_average_round_trips_and_averages_with_the_mirrored_images(tmp_path):
    net = _mlp(model="cnn", hidden=[8], cnn={"channels": [4]})
    x = np.random.default_rng(0).standard_normal((5, 28, 28)).astype(np.float32)
    plain, mirrored = net.predict_logits(x), net.predict_logits(x[:, :, ::-1].copy())
    assert np.abs(plain - mirrored).max() > 1e-3  # the network is not mirror-symmetric
    net.save(tmp_path / "plain.npz")
    net.mirror_average = True
    net.save(tmp_path / "mirror.npz")
    loaded = load_network(tmp_path / "mirror.npz")
    assert loaded.mirror_average and not load_network(tmp_path / "plain.npz").mirror_average
    np.testing.assert_allclose(loaded.predict_logits(x, batch_size=2), (plain + mirrored) / 2, rtol=1e-6, atol=1e-6)
    # Models without it keep their files exactly as before: no key in the header.
    assert "mirror_average" not in json.loads(str(read_arrays(tmp_path / "plain.npz")["architecture"]))
