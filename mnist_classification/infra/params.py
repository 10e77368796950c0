"""Load and validate ``params.yaml`` before any stage does work.

Values are read as YAML 1.2 reads them (as DVC does): ``5e-05``, which
``dvc exp run -S train.lr=0.00005`` writes and PyYAML's default YAML 1.1
loader returns as a string, is the float 5e-05 here. Every key is checked
against :data:`SCHEMA`: unknown keys get a "did you mean" suggestion, wrong
types and out-of-range values name the key and what was expected.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from mnist_classification.infra.errors import PipelineError


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose floats and booleans follow the YAML 1.2 core schema, as DVC writes them.

    ``1e-5`` is a float, and only true/false are booleans: ``yes``, ``no``, ``on``
    and ``off`` are strings (DVC records ``-S key=yes`` as the string "yes").
    """


# Drop YAML 1.1's float and bool resolvers and install the YAML 1.2 core-schema ones.
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text with YAML 1.2 number rules; ``source`` names it in errors."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{source} is not valid YAML{where}: {problem}") from exc


@dataclass(frozen=True)
class Field:
    """One params key: its type, default and constraint."""

    kind: str  # "int", "float", "bool", "choice", "int_list", "str_list", "sha256_map"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # human description of the constraint

    def convert(self, key: str, value: Any) -> Any:
        """Return ``value`` as this field's type, or raise PipelineError naming ``key``."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise _type_error(key, value, "true or false")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(key, value, "a whole number")
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(key, value, "a number")
            value = float(value)
            if not math.isfinite(value):
                raise _type_error(key, value, "a finite number")
        elif self.kind == "choice":
            if not isinstance(value, str):
                raise _type_error(key, value, "a string")
            if value not in self.choices:
                hint = _did_you_mean(value, self.choices)
                raise PipelineError(
                    f"params.yaml: {key} is {value!r}; expected one of {', '.join(self.choices)}{hint}"
                )
        elif self.kind == "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _type_error(key, value, "a list of strings")
        elif self.kind == "sha256_map":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v)
                for k, v in value.items()
            ):
                raise _type_error(key, value, "a mapping of file name to a 64-digit hex SHA-256")
        elif self.kind == "int_list":
            if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value
            ):
                raise _type_error(key, value, "a list of whole numbers, e.g. [800]")
        if self.check is not None and not self.check(value):
            raise PipelineError(f"params.yaml: {key} is {value!r}; expected {self.expect}")
        return value


def _type_error(key: str, value: Any, expected: str) -> PipelineError:
    return PipelineError(f"params.yaml: {key} is {value!r} ({type(value).__name__}); expected {expected}")


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _unit_open(v) -> bool:
    return 0 < v < 1


def _unit_half_open(v) -> bool:
    return 0 <= v < 1


def _unit_closed(v) -> bool:
    return 0 <= v <= 1


def _positive_widths(v) -> bool:
    return len(v) > 0 and all(w > 0 for w in v)


def _distinct_seeds(v) -> bool:
    return len(v) > 0 and len(set(v)) == len(v) and min(v) >= 0


def _distinct_seeds_or_none(v) -> bool:
    return len(v) == 0 or _distinct_seeds(v)


SCHEMA: dict[str, dict[str, Any]] = {
    "fetch": {
        "dataset": Field("choice", "mnist", "dataset to download (custom: your own IDX files, see fetch.custom)",
                         choices=("mnist", "fashion-mnist", "custom")),
        "custom": {
            "classes": Field("str_list", [str(d) for d in range(10)], "class names of a custom dataset",
                             check=lambda v: len(v) == 10 and len(set(v)) == 10, expect="ten distinct names"),
            "sha256": Field("sha256_map", {}, "SHA-256 of each decompressed IDX file of a custom dataset"),
        },
    },
    "preprocess": {
        "val_fraction": Field("float", 0.1, "share of the 60,000 training images held out for validation",
                              check=_unit_open, expect="a number strictly between 0 and 1"),
        "seed": Field("int", 42, "seed of the stratified split", check=_non_negative, expect="a seed >= 0"),
    },
    "train": {
        "model": Field("choice", "mlp", "network type", choices=("mlp", "cnn")),
        "hidden": Field("int_list", [800], "widths of the fully connected hidden layers",
                        check=_positive_widths, expect="a non-empty list of positive widths, e.g. [800]"),
        "activation": Field("choice", "relu", "hidden activation",
                            choices=("relu", "leaky_relu", "tanh", "sigmoid")),
        "init": Field("choice", "he", "weight initialisation", choices=("he", "xavier")),
        "dropout": Field("float", 0.2, "dropout rate after each hidden layer",
                         check=_unit_half_open, expect="a rate in [0, 1)"),
        "optimizer": Field("choice", "adam", "optimiser", choices=("sgd", "momentum", "nesterov", "adam")),
        "lr": Field("float", 0.001, "peak learning rate", check=_positive, expect="a learning rate > 0"),
        "momentum": Field("float", 0.9, "momentum (momentum, nesterov) or beta1 (adam)",
                          check=_unit_half_open, expect="a number in [0, 1)"),
        "weight_decay": Field("float", 0.0, "L2 penalty coefficient on weights",
                              check=_non_negative, expect="a number >= 0"),
        "schedule": Field("choice", "cosine", "learning-rate schedule",
                          choices=("constant", "step", "exponential", "cosine")),
        "warmup_epochs": Field("int", 0, "epochs of linear warmup", check=_non_negative, expect="a whole number >= 0"),
        "step_epochs": Field("int", 10, "epochs between decays (step schedule)",
                             check=_positive, expect="a whole number > 0"),
        "gamma": Field("float", 0.5, "decay factor (step: per step_epochs; exponential: per epoch)",
                       check=lambda v: 0 < v <= 1, expect="a number in (0, 1]"),
        "label_smoothing": Field("float", 0.0, "label smoothing e of the training loss: targets (1 - e) * onehot "
                                 "+ e / classes (0 = off)", check=_unit_half_open, expect="a number in [0, 1)"),
        "epochs": Field("int", 20, "maximum number of epochs", check=_positive, expect="a whole number > 0"),
        "batch_size": Field("int", 128, "mini-batch size", check=_positive, expect="a whole number > 0"),
        "patience": Field("int", 5, "early stopping: epochs without a better validation accuracy (0 = off)",
                          check=_non_negative, expect="a whole number >= 0"),
        "seed": Field("int", 0, "seed of initialisation, shuffling, dropout and augmentation",
                      check=_non_negative, expect="a seed >= 0"),
        "mirror_average": Field("bool", False, "at inference, average each image's logits with its left-right "
                                "mirror's (for models trained with train.augment.flip); kept only if that raises the "
                                "validation accuracy, or keeps it and lowers the validation loss"),
        "calibrate": Field("bool", True, "after training, fit a softmax temperature on the validation split "
                           "and keep it in the model if it lowers the validation cross-entropy without "
                           "worsening the validation ECE (false: temperature 1)"),
        "cnn": {
            "channels": Field("int_list", [32, 64], "output channels of each conv block",
                              check=_positive_widths, expect="a non-empty list of positive channel counts"),
            "kernel_size": Field("int", 3, "square kernel size", check=lambda v: v in (3, 5, 7),
                                 expect="3, 5 or 7"),
            "batch_norm": Field("bool", True, "batch normalisation after each convolution"),
            "conv": Field("choice", "auto", "convolution algorithm: auto (the fastest measured: blocked), "
                          "winograd (F(2x2,3x3) on blocks of images on all cores), blocked (im2col "
                          "on blocks of images on all cores) or im2col (the whole-batch reference)",
                          choices=("auto", "blocked", "im2col", "winograd")),
        },
        "augment": {
            "enabled": Field("bool", False, "augment training batches"),
            "shift": Field("float", 2.0, "maximum translation in pixels", check=_non_negative, expect=">= 0"),
            "rotation": Field("float", 10.0, "maximum rotation in degrees", check=_non_negative, expect=">= 0"),
            "scale": Field("float", 0.1, "maximum relative scale change", check=_unit_half_open,
                           expect="a number in [0, 1)"),
            "shear": Field("float", 0.1, "maximum shear (tangent of the angle)", check=_non_negative,
                           expect=">= 0"),
            "elastic_alpha": Field("float", 0.0, "elastic distortion strength in pixels (0 = off)",
                                   check=_non_negative, expect=">= 0"),
            "elastic_sigma": Field("float", 4.0, "elastic smoothing in pixels", check=_positive, expect="> 0"),
            "flip": Field("float", 0.0, "probability of mirroring an image left to right (0 = off; for "
                          "mirror-symmetric classes such as clothes, not digits)", check=_unit_closed,
                          expect="a probability in [0, 1]"),
            "erase": Field("float", 0.0, "probability of erasing a random rectangle of 2-40% of an image "
                           "to black (random erasing; 0 = off)", check=_unit_closed,
                           expect="a probability in [0, 1]"),
        },
    },
    "committee": {
        "seeds": Field("int_list", [0, 1, 2, 3, 4], "seed (train.seed) of each committee member, one member per seed",
                       check=_distinct_seeds,
                       expect="a non-empty list of distinct seeds >= 0, e.g. [0, 1, 2, 3, 4]"),
        "elastic_seeds": Field("int_list", [], "seed of each member trained on committee/elastic.yaml's recipe "
                               "(elastic distortion added), one member per seed; [] = none",
                               check=_distinct_seeds_or_none, expect="a list of distinct seeds >= 0, e.g. [5, 6]"),
    },
    "evaluate": {
        "gallery_size": Field("int", 36, "misclassified test images shown in plots/misclassified.png",
                              check=_positive, expect="a whole number > 0"),
    },
}


def _validate(section: dict, schema: dict, prefix: str, path: str) -> dict:
    if not isinstance(section, dict):
        raise PipelineError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a mapping of keys to values")
    result = {}
    for key in section:
        if key not in schema:
            hint = _did_you_mean(str(key), schema)
            raise PipelineError(
                f"{path}: unknown key {prefix}{key}{hint}; known keys here: {', '.join(schema)}"
            )
    for key, spec in schema.items():
        full = f"{prefix}{key}"
        if isinstance(spec, dict):
            value = section.get(key)
            result[key] = _validate({} if value is None else value, spec, f"{full}.", path)
        elif key in section:
            result[key] = spec.convert(full, section[key])
        else:
            result[key] = spec.default
    return result


def _check_together(train: dict, path: str) -> None:
    """Constraints between keys, each valid alone."""
    if train["warmup_epochs"] > train["epochs"]:
        raise PipelineError(
            f"{path}: train.warmup_epochs is {train['warmup_epochs']} but train.epochs is {train['epochs']}; "
            "the learning rate would never reach train.lr: expected train.warmup_epochs <= train.epochs"
        )


def validate(raw: Any, path: str = "params.yaml") -> dict:
    """Check a parsed params mapping against :data:`SCHEMA`; fill in defaults."""
    if raw is None:
        raw = {}
    try:
        params = _validate(raw, SCHEMA, "", path)
        _check_together(params["train"], path)
        return params
    except PipelineError as exc:
        message = str(exc)
        if not message.startswith(path) and message.startswith("params.yaml"):
            message = path + message[len("params.yaml"):]
        raise PipelineError(message) from None


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate the whole params file; return all sections with defaults filled in."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the stage from the project root") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}") from None
    return validate(load_yaml(text, str(path)), str(path))
