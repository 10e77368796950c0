"""A network as an ordered list of layers: build from params, run, save and load as ``.npz``.

The model file is a plain ``.npz`` that loads with ``allow_pickle=False``:
``architecture`` holds JSON (format tag, input shape, class names,
normalisation statistics, layer configs and a SHA-256 of every array), and
``<layer index>.<name>`` holds each parameter or buffer as float32. Loading
rebuilds every layer from its config and refuses anything that does not fit:
unknown layer types, missing, extra or misshapen arrays, non-finite weights
and files whose arrays do not match their checksum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mnist_classification.infra import atomic
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.npz import read_npz
from mnist_classification.nn.activations import ACTIVATIONS
from mnist_classification.nn.conv import CONV_LAYERS, conv_feature_layers
from mnist_classification.nn.layers import AddChannel, Dense, Dropout, Flatten, Layer
from mnist_classification.nn.losses import softmax

FORMAT = "mnist-classification/model-v1"

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls for cls in (Dense, Dropout, Flatten, AddChannel, *ACTIVATIONS.values(), *CONV_LAYERS)
}


class Network:
    """Layers applied in order to standardised images (N, H, W) float32, giving logits (N, K)."""

    def __init__(self, layers: list[Layer], input_shape: tuple[int, int], classes: list[str],
                 mean: float, std: float) -> None:
        self.layers = layers
        self.input_shape = tuple(int(d) for d in input_shape)
        self.classes = list(classes)
        self.mean, self.std = float(mean), float(std)
        # Nothing uses the gradient with respect to the images: layers up to and including
        # the first one with parameters skip computing their input gradient.
        for layer in layers:
            layer.needs_input_grad = False
            if layer.params:
                break

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, grad: np.ndarray) -> None:
        for layer in reversed(self.layers):
            if not layer.needs_input_grad and not layer.params:
                break
            grad = layer.backward(grad)

    def trainable(self) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(param, grad, decayed) for every trainable array, in a fixed order."""
        return [(layer.params[name], layer.grads[name], name in layer.decayed)
                for layer in self.layers for name in layer.params]

    def predict_proba(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (N, K) float32 for standardised images x (N, H, W)."""
        out = np.empty((len(x), len(self.classes)), dtype=np.float32)
        for start in range(0, len(x), batch_size):
            out[start:start + batch_size] = softmax(self.forward(x[start:start + batch_size], False))
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed ``<layer index>.<name>``."""
        return {f"{i}.{name}": array.copy() for i, layer in enumerate(self.layers)
                for store in (layer.params, layer.buffers) for name, array in store.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays from :meth:`state` back into the layers, in place."""
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for name in store:
                    store[name][...] = state[f"{i}.{name}"]

    def count_parameters(self) -> int:
        return int(sum(p.size for layer in self.layers for p in layer.params.values()))

    def architecture(self) -> dict:
        return {"format": FORMAT, "input_shape": list(self.input_shape), "classes": self.classes,
                "normalisation": {"mean": self.mean, "std": self.std},
                "layers": [layer.config() for layer in self.layers]}

    def save(self, path: str | Path) -> None:
        """Write the model atomically; refuses to write non-finite weights."""
        arrays = self.state()
        for key, array in arrays.items():
            if not np.all(np.isfinite(array)):
                raise PipelineError(f"refusing to write {path}: {key} holds NaN or infinite values")
        header = self.architecture()
        header["sha256"] = _digest(arrays)
        arrays["architecture"] = np.array(json.dumps(header, sort_keys=True))
        atomic.save_npz(path, arrays)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(str(arrays[key].shape).encode())
        digest.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return digest.hexdigest()


def layer_from_config(config: dict) -> Layer:
    """Rebuild one layer (with placeholder weights) from its ``config()``."""
    if not isinstance(config, dict) or config.get("type") not in LAYER_TYPES:
        kind = config.get("type") if isinstance(config, dict) else config
        raise ValueError(f"unknown layer type {kind!r}")
    kwargs = {key: value for key, value in config.items() if key != "type"}
    try:
        return LAYER_TYPES[config["type"]](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad config for layer {config['type']!r}: {exc}") from None


def load_network(path: str | Path) -> Network:
    """Load and validate a model file written by :meth:`Network.save`. Nothing in it is executed."""
    path = Path(path)
    arrays = read_npz(path, "model file", "train one with `dvc repro` or pass --model PATH")
    try:
        return _network_from_arrays(arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"model file {path} is invalid: {exc}") from None


def _network_from_arrays(arrays: dict[str, np.ndarray]) -> Network:
    header_array = arrays.pop("architecture", None)
    if header_array is None or header_array.dtype.kind != "U" or header_array.shape != ():
        raise ValueError("no 'architecture' entry; this is not a model written by this project")
    header = json.loads(str(header_array))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"unknown format {header.get('format') if isinstance(header, dict) else header!r}; "
                         f"expected {FORMAT}")
    layers = [layer_from_config(config) for config in header["layers"]]
    network = Network(layers, tuple(header["input_shape"]), header["classes"],
                      header["normalisation"]["mean"], header["normalisation"]["std"])
    expected = {f"{i}.{name}": array for i, layer in enumerate(layers)
                for store in (layer.params, layer.buffers) for name, array in store.items()}
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not fit the architecture (missing {missing}, unexpected {extra})")
    for key, placeholder in expected.items():
        if arrays[key].shape != placeholder.shape or arrays[key].dtype != np.float32:
            raise ValueError(f"{key} has shape {arrays[key].shape} {arrays[key].dtype}; the architecture "
                             f"needs {placeholder.shape} float32")
        if not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"{key} holds NaN or infinite values")
    if header.get("sha256") != _digest(arrays):
        raise ValueError("its weights do not match the checksum recorded at training; the file was "
                         "modified or corrupted")
    network.load_state(arrays)
    shape = network.input_shape
    for layer in layers:
        shape = layer.output_shape(shape)
    if shape != (len(network.classes),):
        raise ValueError(f"the layers produce {shape} outputs for {len(network.classes)} classes")
    return network


def build_network(train: dict, input_shape: tuple[int, int], classes: list[str], mean: float,
                  std: float) -> Network:
    """Build an untrained network from the ``train`` params section (seeded by ``train.seed``)."""
    seed = train["seed"]
    init_rng = np.random.default_rng([seed, 0])
    activation = ACTIVATIONS[train["activation"]]
    layers: list[Layer] = []
    if train["model"] == "cnn":
        cnn = train["cnn"]
        layers.append(AddChannel())
        layers += conv_feature_layers(cnn["channels"], cnn["kernel_size"], cnn["batch_norm"],
                                      train["activation"], train["init"], init_rng)
    shape: tuple[int, ...] = tuple(input_shape)
    for layer in layers:
        shape = layer.output_shape(shape)
    layers.append(Flatten())
    width = int(np.prod(shape))
    for index, hidden in enumerate(train["hidden"]):
        layers += [Dense(width, hidden, train["init"], init_rng), activation()]
        if train["dropout"] > 0:
            layers.append(Dropout(train["dropout"], np.random.default_rng([seed, 1, index])))
        width = hidden
    # The output layer feeds softmax: Xavier keeps its logits small at the start.
    layers.append(Dense(width, len(classes), "xavier", init_rng))
    return Network(layers, input_shape, classes, mean, std)
