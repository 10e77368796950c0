"""params.yaml: YAML 1.2 numbers as DVC writes them, validation with clear messages."""

from pathlib import Path

import pytest

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.params import SCHEMA, load_params, load_yaml, validate

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert set(params) == set(SCHEMA)


def test_dvc_written_exponent_is_a_float(tmp_path):
    # `dvc exp run -S train.lr=0.00005` writes 5e-05, a string to PyYAML's default loader.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 5e-05\n  weight_decay: 1E-4\n")
    params = load_params(path)
    assert params["train"]["lr"] == 5e-05
    assert params["train"]["weight_decay"] == 1e-4


def test_yaml_12_number_forms():
    assert load_yaml("[1e3, .5, -2.5E-3, 7, +1.0]", "x") == [1000.0, 0.5, -0.0025, 7, 1.0]


def test_yaml_12_booleans():
    assert load_yaml("[true, False, TRUE, yes, no, on, off, y]", "x") == [True, False, True, "yes", "no", "on",
                                                                          "off", "y"]
    with pytest.raises(PipelineError, match="train.augment.enabled is 'yes' \\(str\\); expected true or false"):
        validate(load_yaml("train:\n  augment:\n    enabled: yes\n", "x"))
    classes = ["no", "yes", "on", "off", "a", "b", "c", "d", "e", "f"]
    assert validate(load_yaml(f"fetch:\n  custom:\n    classes: [{', '.join(classes)}]\n", "x")
                    )["fetch"]["custom"]["classes"] == classes


def test_integer_accepted_where_a_float_is_expected():
    assert validate({"train": {"lr": 1}})["train"]["lr"] == 1.0


@pytest.mark.parametrize("raw,fragment", [
    ({"train": {"lrr": 0.1}}, "unknown key train.lrr (did you mean 'lr'?)"),
    ({"trian": {}}, "unknown key trian (did you mean 'train'?)"),
    ({"train": {"lr": -0.1}}, "train.lr is -0.1; expected a learning rate > 0"),
    ({"train": {"lr": "fast"}}, "train.lr is 'fast' (str); expected a number"),
    ({"train": {"epochs": 2.5}}, "train.epochs is 2.5 (float); expected a whole number"),
    ({"train": {"epochs": True}}, "train.epochs is True (bool); expected a whole number"),
    ({"train": {"hidden": []}}, "train.hidden is []; expected a non-empty list"),
    ({"train": {"hidden": [800, -1]}}, "train.hidden is [800, -1]"),
    ({"train": {"activation": "rellu"}}, "expected one of relu, leaky_relu, tanh, sigmoid (did you mean 'relu'?)"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer is 'rmsprop'; expected one of sgd, momentum"),
    ({"preprocess": {"val_fraction": 0}}, "preprocess.val_fraction is 0.0; expected a number strictly between 0 and 1"),
    ({"preprocess": {"val_fraction": 1.5}}, "strictly between 0 and 1"),
    ({"train": {"augment": {"enabled": "yes"}}}, "train.augment.enabled is 'yes' (str); expected true or false"),
    ({"train": {"cnn": 3}}, "train.cnn must be a mapping"),
    ({"train": {"cnn": 0}}, "train.cnn must be a mapping"),
    ({"train": {"augment": False}}, "train.augment must be a mapping"),
    ({"train": False}, "train must be a mapping"),
    ({"train": {"warmup_epochs": 5, "epochs": 3}},
     "train.warmup_epochs is 5 but train.epochs is 3; the learning rate would never reach train.lr"),
    ({"fetch": {"dataset": "cifar"}}, "fetch.dataset is 'cifar'; expected one of mnist, fashion-mnist, custom"),
    ({"fetch": {"custom": {"sha256": {"x": "abc"}}}}, "fetch.custom.sha256 is"),
    ({"committee": {"seeds": []}}, "committee.seeds is []; expected a non-empty list of distinct seeds >= 0"),
    ({"committee": {"seeds": [0, 1, 0]}}, "committee.seeds is [0, 1, 0]; expected a non-empty list of distinct"),
    ({"committee": {"seeds": [-1]}}, "committee.seeds is [-1]"),
    ({"committee": {"seeds": 3}}, "committee.seeds is 3 (int); expected a list of whole numbers"),
])
def test_bad_values_are_named(raw, fragment):
    with pytest.raises(PipelineError) as error:
        validate(raw)
    assert fragment in str(error.value)


def test_empty_sections_take_the_defaults():
    assert validate({"train": None, "evaluate": {}})["train"]["augment"]["enabled"] is False


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(PipelineError, match=r"params.yaml is not valid YAML at line \d+"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_defaults_fill_missing_keys():
    params = validate({})
    assert params["train"]["hidden"] == SCHEMA["train"]["hidden"].default
    assert params["train"]["augment"]["enabled"] is False
