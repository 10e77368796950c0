"""Building networks from params, and model files: round trip and refusal of bad files."""

import json

import numpy as np
import pytest
from model_files import add_pickled_payload, read_arrays

from mnist_classification.infra import atomic
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.network import build_network, load_network

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


def test_wrong_architecture_for_weights(model_file):
    arrays = read_arrays(model_file)
    header = json.loads(str(arrays["architecture"]))
    header["layers"][1]["out_features"] = 17
    arrays["architecture"] = np.array(json.dumps(header))
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match=r"1.W has shape \(784, 16\) float32; the architecture needs \(784, 17\)"):
        load_network(model_file)


def test_input_shape_that_the_first_dense_layer_cannot_take(model_file):
    arrays = read_arrays(model_file)
    header = json.loads(str(arrays["architecture"]))
    header["input_shape"] = [10, 10]
    arrays["architecture"] = np.array(json.dumps(header))
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match=r"Dense expects \(784,\) samples, got \(100,\)"):
        load_network(model_file)


def test_unknown_layer_type(model_file):
    arrays = read_arrays(model_file)
    header = json.loads(str(arrays["architecture"]))
    header["layers"][2]["type"] = "os.system"
    arrays["architecture"] = np.array(json.dumps(header))
    atomic.save_npz(model_file, arrays)
    with pytest.raises(PipelineError, match="unknown layer type 'os.system'"):
        load_network(model_file)


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
