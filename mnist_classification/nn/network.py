"""A network as an ordered list of layers: build from params, run, save and load as ``.npz``.

The model file is a plain ``.npz`` that loads with ``allow_pickle=False``:
``architecture`` holds JSON (format tag, input shape, class names,
normalisation statistics, the softmax temperature, layer configs and a SHA-256
of every array), and
``<layer index>.<name>`` holds each parameter or buffer as float32. Loading
(:func:`load_network`) checks everything the header and the archive's table of
contents tell before it loads any array, then rebuilds every layer from its
config around the stored arrays (never from a fresh initialisation): a file
that declares huge layers without holding them is refused in milliseconds.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import reprlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mnist_classification.infra import atomic
from mnist_classification.infra.blas import single_threaded_blas
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.npz import NpyHeader, NpzArchive
from mnist_classification.nn.activations import ACTIVATIONS
from mnist_classification.nn.conv import CONV_LAYERS, conv_feature_layers
from mnist_classification.nn.layers import AddChannel, Dense, Dropout, Flatten, Layer
from mnist_classification.nn.losses import softmax

FORMAT = "mnist-classification/model-v1"

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls for cls in (Dense, Dropout, Flatten, AddChannel, *ACTIVATIONS.values(), *CONV_LAYERS)
}

#: Largest dimension, channel count or kernel size a layer config may declare.
MAX_SIZE = 2**31 - 1
#: Largest ``architecture`` entry accepted (the CNN's is about 4 KB).
MAX_ARCHITECTURE_BYTES = 1 << 20
_HEADER_KEYS = {"format", "input_shape", "classes", "normalisation", "layers", "sha256"}
#: Header keys a file may lack (files written before they existed): key -> value assumed.
_OPTIONAL_HEADER_KEYS = {"temperature": 1.0, "mirror_average": False}
#: Range a temperature must lie in, to be stored or loaded.
TEMPERATURE_RANGE = (1e-3, 1e3)
_HINT = "train one with `dvc repro` or pass --model PATH"


class Network:
    """Layers applied in order to standardised images (N, H, W) float32, giving logits (N, K).

    ``temperature`` T > 0 calibrates the reported probabilities: softmax(logits / T)
    (1.0 = the logits as trained; fitted after training, see ``reports.calibration``).
    """

    def __init__(self, layers: list[Layer], input_shape: tuple[int, int], classes: list[str],
                 mean: float, std: float, temperature: float = 1.0, mirror_average: bool = False) -> None:
        self.layers = layers
        self.input_shape = tuple(int(d) for d in input_shape)
        self.classes = list(classes)
        self.mean, self.std = float(mean), float(std)
        self.temperature = float(temperature)
        self.mirror_average = bool(mirror_average)
        # Nothing uses the gradient with respect to the images: layers up to and including
        # the first one with parameters skip computing their input gradient.
        for layer in layers:
            layer.needs_input_grad = False
            if layer.params:
                break
        # Layers that split batches over the cores run one single-threaded BLAS per core; the
        # others' products then stay single-threaded too, since OpenBLAS's own threads keep
        # spinning on the cores for about 0.1 s after each multi-threaded product.
        self._blas_threads = single_threaded_blas if any(layer.splits_batch for layer in layers) else nullcontext

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        with self._blas_threads():
            for layer in self.layers:
                x = layer.forward(x, training)
        return x

    def backward(self, grad: np.ndarray) -> None:
        with self._blas_threads():
            for layer in reversed(self.layers):
                if not layer.needs_input_grad and not layer.params:
                    break
                grad = layer.backward(grad)

    def trainable(self) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(param, grad, decayed) for every trainable array, in a fixed order."""
        return [(layer.params[name], layer.grads[name], name in layer.decayed)
                for layer in self.layers for name in layer.params]

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits (N, K) float32 for standardised images x (N, H, W), in inference mode; with
        ``mirror_average``, the mean of each image's logits and its left-right mirror's."""
        out = np.empty((len(x), len(self.classes)), dtype=np.float32)
        for start in range(0, len(x), batch_size):
            batch, rows = x[start:start + batch_size], out[start:start + batch_size]
            rows[...] = self.forward(batch, False)
            if self.mirror_average:
                rows += self.forward(np.ascontiguousarray(batch[:, :, ::-1]), False)
                rows /= np.float32(2)
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities softmax(logits / temperature) (N, K) float32 from logits (N, K)."""
        return softmax(logits / np.float32(self.temperature))

    def predict_proba(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Calibrated class probabilities (N, K) float32 for standardised images x (N, H, W)."""
        return self.probabilities(self.predict_logits(x, batch_size))

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
        header = {"format": FORMAT, "input_shape": list(self.input_shape), "classes": self.classes,
                  "normalisation": {"mean": self.mean, "std": self.std}, "temperature": self.temperature,
                  "layers": [layer.config() for layer in self.layers]}
        if self.mirror_average:  # written only when set: other models' files stay as they were
            header["mirror_average"] = True
        return header

    def save(self, path: str | Path) -> None:
        """Write the model atomically; refuses to write non-finite weights or a temperature out of range."""
        if not valid_temperature(self.temperature):
            raise PipelineError(f"refusing to write {path}: temperature {self.temperature!r} is not "
                                f"{TEMPERATURE_EXPECTED}")
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


#: What a valid temperature is, for error messages.
TEMPERATURE_EXPECTED = f"a finite number from {TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}"


def valid_temperature(value) -> bool:
    """Whether a model or committee file's temperature is a number in TEMPERATURE_RANGE."""
    return type(value) in (int, float) and TEMPERATURE_RANGE[0] <= value <= TEMPERATURE_RANGE[1]


def _brief(value) -> str:
    """A short repr of any header value, for messages."""
    return reprlib.repr(value)


# Layer constructor arguments a config may set, by annotation: (check, what is expected).
_CONFIG_VALUES = {
    "int": (lambda v: type(v) is int and 1 <= v <= MAX_SIZE, f"a whole number from 1 to {MAX_SIZE}"),
    "float": (lambda v: type(v) in (int, float) and math.isfinite(v), "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _config_kwargs(config) -> tuple[type[Layer], dict]:
    """The layer class and constructor arguments of one layer config, type-checked; nothing is built.

    Every key but ``type`` must be an int, float or str argument of the layer's
    constructor; whole numbers must be in 1..MAX_SIZE, other numbers finite.
    """
    kind = config.get("type") if isinstance(config, dict) else config
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {_brief(kind)}")
    cls = LAYER_TYPES[kind]
    arguments = inspect.signature(cls).parameters
    kwargs = {key: value for key, value in config.items() if key != "type"}
    for key, value in kwargs.items():
        if key not in arguments or arguments[key].annotation not in _CONFIG_VALUES:
            raise ValueError(f"unknown key {_brief(key)}")
        check, expected = _CONFIG_VALUES[arguments[key].annotation]
        if not check(value):
            raise ValueError(f"{key} is {_brief(value)}; expected {expected}")
    return cls, kwargs


def layer_from_config(config: dict, arrays: dict[str, np.ndarray] | None = None) -> Layer:
    """Rebuild one layer from its ``config()`` and, for a layer with params or buffers, its ``arrays``.

    The layer holds ``arrays`` themselves (no copy, no fresh initialisation). Raises
    ValueError for a config or arrays that do not fit the layer.
    """
    cls, kwargs = _config_kwargs(config)
    if "arrays" in inspect.signature(cls).parameters:
        kwargs["arrays"] = {} if arrays is None else arrays
    elif arrays:
        raise ValueError(f"holds no arrays but the file gives it {', '.join(sorted(arrays))}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def load_network(path: str | Path) -> Network:
    """Load and validate a model file written by :meth:`Network.save`. Nothing in it is executed.

    Everything the file's header and table of contents tell is checked before any
    array is loaded: the architecture (known keys and layer types, sizes in range,
    finite normalisation, a temperature in :data:`TEMPERATURE_RANGE`, 1.0 if absent),
    that each layer's input fits the previous layer's output, that the file holds
    exactly the arrays the layers need, as float32 of the right shapes, and that
    they fit in memory. Then the arrays are loaded, checked for
    NaN/inf and against the SHA-256 recorded at training, and become the layers' params.
    """
    path = Path(path)
    with NpzArchive(path, "model file", _HINT) as archive:
        try:
            header = _read_header(archive)
            layers = _check_layers(header, archive.headers)
            archive.check_memory(archive.headers)
            arrays = {key: archive.load(key) for key in archive.headers if key != "architecture"}
            _check_values(arrays, header["sha256"])
        except ValueError as exc:
            raise PipelineError(f"model file {path} is invalid: {exc}") from None
    for index, layer in enumerate(layers):
        layer.adopt({name: arrays[f"{index}.{name}"] for name in layer.array_shapes()})
    (height, width), normalisation = header["input_shape"], header["normalisation"]
    return Network(layers, (height, width), header["classes"], normalisation["mean"], normalisation["std"],
                   header["temperature"], header["mirror_average"])


def _read_header(archive: NpzArchive) -> dict:
    """The model's JSON architecture, checked for shape and types (not yet against the arrays)."""
    entry = archive.headers.get("architecture")
    if entry is None or entry.dtype.kind != "U" or entry.shape != ():
        raise ValueError("no 'architecture' entry; this is not a model written by this project")
    if entry.nbytes > MAX_ARCHITECTURE_BYTES:
        raise ValueError(f"its architecture entry is {entry.nbytes} bytes; expected at most "
                         f"{MAX_ARCHITECTURE_BYTES}")
    try:
        header = json.loads(str(archive.load("architecture")))
    except RecursionError:
        raise ValueError("its architecture is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"its architecture is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"unknown format {_brief(found)}; expected {FORMAT}")
    unknown = sorted(header.keys() - _HEADER_KEYS - _OPTIONAL_HEADER_KEYS.keys())
    missing = sorted(_HEADER_KEYS - header.keys())
    if unknown or missing:
        problems = [f"{label} {_brief(keys)}" for label, keys in (("unknown keys", unknown), ("missing", missing))
                    if keys]
        raise ValueError(f"its architecture has {' and '.join(problems)}")
    shape, classes, norm = header["input_shape"], header["classes"], header["normalisation"]
    if not (isinstance(shape, list) and len(shape) == 2
            and all(type(d) is int and 1 <= d <= MAX_SIZE for d in shape)):
        raise ValueError(f"input_shape is {_brief(shape)}; expected [height, width] in pixels")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"classes is {_brief(classes)}; expected a non-empty list of class names")
    if not (isinstance(norm, dict) and norm.keys() == {"mean", "std"}
            and all(type(v) in (int, float) and math.isfinite(v) for v in norm.values()) and norm["std"] > 0):
        raise ValueError(f"normalisation is {_brief(norm)}; expected finite mean and std, std > 0")
    header = {**_OPTIONAL_HEADER_KEYS, **header}
    if not valid_temperature(header["temperature"]):
        raise ValueError(f"temperature is {_brief(header['temperature'])}; expected {TEMPERATURE_EXPECTED}")
    if type(header["mirror_average"]) is not bool:
        raise ValueError(f"mirror_average is {_brief(header['mirror_average'])}; expected true or false")
    if not (isinstance(header["layers"], list) and header["layers"]):
        raise ValueError(f"layers is {_brief(header['layers'])}; expected a non-empty list of layer configs")
    if not (isinstance(header["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", header["sha256"])):
        raise ValueError(f"sha256 is {_brief(header['sha256'])}; expected 64 hex digits")
    return header


def _check_layers(header: dict, stored: dict[str, NpyHeader]) -> list[Layer]:
    """The layers of ``header``, holding zero-cost stand-ins of the stored arrays' shapes.

    Checks, from the stored arrays' headers alone, that every layer gets exactly the
    float32 arrays of the shapes its config implies, and that each layer's input fits
    the previous layer's output and the last one gives one output per class.
    """
    by_layer: dict[int, dict[str, np.ndarray]] = {}
    for key, entry in stored.items():
        if key == "architecture":
            continue
        match = re.fullmatch(r"(0|[1-9][0-9]*)\.(\w+)", key)
        if not match or int(match[1]) >= len(header["layers"]):
            raise ValueError(f"it holds an array {_brief(key)} that no layer uses")
        if entry.dtype != np.float32:
            raise ValueError(f"{key} has dtype {entry.dtype}; expected float32")
        by_layer.setdefault(int(match[1]), {})[match[2]] = np.broadcast_to(np.float32(0), entry.shape)
    layers = []
    shape: tuple[int, ...] = tuple(header["input_shape"])
    for index, config in enumerate(header["layers"]):
        try:
            layer = layer_from_config(config, by_layer.get(index))
            shape = layer.output_shape(shape)
        except ValueError as exc:
            kind = config.get("type") if isinstance(config, dict) else None
            known = isinstance(kind, str) and kind in LAYER_TYPES
            raise ValueError(f"layer {index} ({kind}): {exc}" if known else f"layer {index}: {exc}") from None
        layers.append(layer)
    if shape != (len(header["classes"]),):
        raise ValueError(f"the layers produce {shape} outputs for {len(header['classes'])} classes")
    return layers


def _check_values(arrays: dict[str, np.ndarray], sha256: str) -> None:
    for key, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{key} holds NaN or infinite values")
    if sha256 != _digest(arrays):
        raise ValueError("its weights do not match the checksum recorded at training; the file was "
                         "modified or corrupted")


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
                                      train["activation"], train["init"], init_rng, cnn["conv"])
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
