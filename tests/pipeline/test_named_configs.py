"""Named training recipes: conf/ composed into params.yaml by DVC's Hydra support (`dvc exp run -S train=NAME`).

params.yaml must be exactly what DVC writes for the default composition (so that a plain `dvc exp run`
leaves it unchanged and `dvc repro` runs the defaults); every recipe in conf/train/ must compose into
params that the stages accept; and in a throw-away project a recipe picked by name runs as an experiment
whose params are the recipe's, with single keys still overridable.
"""

from __future__ import annotations

import json

import pytest
import yaml
from configobj import ConfigObj
from dvc.utils.hydra import compose_and_dump
from pipeline_helpers import ROOT, commit_all, make_project, project_env, run, write_mirror

from mnist_classification.infra.params import load_params

CONF = ROOT / "conf"
RECIPES = sorted(path.stem for path in (CONF / "train").glob("*.yaml"))


def compose(folder, overrides, conf=CONF):
    """params.yaml as `dvc exp run -S OVERRIDE...` writes it."""
    output = folder / "params.yaml"
    compose_and_dump(output, str(conf), None, "config", "", overrides)
    return output


def test_hydra_composition_is_enabled():
    assert ConfigObj(str(ROOT / ".dvc" / "config"))["hydra"]["enabled"] == "true"


def test_params_yaml_is_the_default_composition(tmp_path):
    assert compose(tmp_path, []).read_text() == (ROOT / "params.yaml").read_text(), (
        "params.yaml differs from conf/: run `dvc exp run` (it rewrites params.yaml) and commit it")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_into_valid_params(tmp_path, recipe):
    params = load_params(compose(tmp_path, [f"train={recipe}"]))  # the stages' own validation
    default = load_params(ROOT / "params.yaml")
    assert params["preprocess"] == default["preprocess"] and params["evaluate"] == default["evaluate"]
    if recipe != "mlp":
        assert params["train"] != default["train"]


def test_recipes_hold_the_readme_configurations(tmp_path):
    cnn = load_params(compose(tmp_path, ["train=cnn"]))
    assert (cnn["train"]["model"], cnn["train"]["hidden"], cnn["train"]["epochs"]) == ("cnn", [256], 16)
    long = load_params(compose(tmp_path, ["train=cnn-long"]))
    assert long["train"].pop("epochs") == 30 and cnn["train"].pop("epochs") == 16
    assert long == cnn  # the same CNN, only trained longer
    fashion = load_params(compose(tmp_path, ["train=fashion-cnn"]))
    assert fashion["fetch"]["dataset"] == "fashion-mnist" and fashion["train"]["dropout"] == 0.4
    assert fashion["train"]["augment"]["rotation"] == 0
    deep = load_params(compose(tmp_path, ["train=mlp-deep", "train.lr=0.002"]))
    assert deep["train"]["hidden"] == [800, 800] and deep["train"]["lr"] == 0.002


def test_exp_run_picks_a_recipe_by_name(tmp_path):
    mirror = tmp_path / "mirror"
    project = make_project(tmp_path, write_mirror(mirror))
    env = project_env(project, mirror)
    # The throw-away project's conf/: the real one with the synthetic dataset and small networks.
    conf_dir = project / "conf"
    (conf_dir / "train").mkdir(parents=True)
    synthetic = yaml.safe_load((project / "params.yaml").read_text())
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    config["fetch"] = synthetic["fetch"]
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for recipe in RECIPES:
        (conf_dir / "train" / f"{recipe}.yaml").write_text((CONF / "train" / f"{recipe}.yaml").read_text())
    (conf_dir / "train" / "mlp.yaml").write_text(yaml.safe_dump(synthetic["train"], sort_keys=False))
    run(["dvc", "config", "hydra.enabled", "true"], project, env)
    compose(project, [], conf_dir)
    commit_all(project, "named recipes")

    run(["dvc", "exp", "run", "-S", "train=mlp-wide", "-S", "train.epochs=2"], project, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    experiment = next(exp for row in shown for exp in row.get("experiments") or [])
    params = experiment["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["hidden"] == [1024] and params["train"]["dropout"] == 0.4  # the recipe
    assert params["train"]["epochs"] == 2 and params["train"]["batch_size"] == 32  # override; its base
    assert params["fetch"]["dataset"] == "custom"
    assert json.loads((project / "metrics" / "train.json").read_text())["epochs_run"] == 2


# The recipe of the committee's members (committee/params.yaml), written out there as composed here.
COMMITTEE_RECIPE = "cnn-long"


def test_committee_members_follow_their_recipe(tmp_path):
    load_params(ROOT / "committee" / "params.yaml")  # valid for the stages
    written = yaml.safe_load((ROOT / "committee" / "params.yaml").read_text())["train"]
    recipe = yaml.safe_load(compose(tmp_path, [f"train={COMMITTEE_RECIPE}"]).read_text())["train"]
    assert "seed" not in written, "committee/params.yaml: each member's train.seed comes from committee.seeds"
    del recipe["seed"]
    assert written == recipe, (f"committee/params.yaml's train section differs from conf/train/"
                               f"{COMMITTEE_RECIPE}.yaml as `-S train=...` composes it; change both (or "
                               "COMMITTEE_RECIPE)")


def test_the_elastic_members_recipe_is_the_members_with_elastic_distortion():
    load_params(ROOT / "committee" / "elastic.yaml")  # valid for the stages
    members = yaml.safe_load((ROOT / "committee" / "params.yaml").read_text())["train"]
    elastic = yaml.safe_load((ROOT / "committee" / "elastic.yaml").read_text())["train"]
    assert elastic["augment"].pop("elastic_alpha") > 0 and members["augment"].pop("elastic_alpha") == 0
    assert elastic == members, ("committee/elastic.yaml's train section differs from committee/params.yaml's "
                                "in more than augment.elastic_alpha; change both")
