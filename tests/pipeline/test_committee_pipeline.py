"""The committee pipeline (committee/dvc.yaml) end to end, in a throw-away project on the tiny synthetic data.

Members are tiny CNNs (one conv block of 4 channels, dense 16, one epoch). One `dvc repro committee/dvc.yaml`
runs the root's fetch and preprocess, one stage per member and the ensemble (never the root's train);
the ensemble's temperature, metrics and committee file are checked against the members' probabilities
here, and ``predict`` with the committee file against the ensemble's probabilities;
changing one seed (`dvc exp run -S committee/params.yaml:committee.seeds=...`) reruns that member and the
ensemble only; a member queued and run with `dvc exp run --queue` comes back from the run-cache, untrained;
an elastic member (committee.elastic_seeds) trains on committee/elastic.yaml's recipe and joins the committee.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from pipeline_helpers import ROOT, commit_all, make_project, project_env, run, wait_for_queue, write_mirror

from mnist_classification.data.preprocessing import load_prepared, standardise
from mnist_classification.nn.committee import scale_probabilities
from mnist_classification.nn.network import load_network
from mnist_classification.reports.committee_calibration import calibrate_committee
from mnist_classification.tools import predict

TINY_TRAIN = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "hidden": [16]}


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def committee_metrics(project) -> dict:
    return json.loads((project / "committee" / "metrics" / "eval.json").read_text())


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    """The synthetic project with the committee pipeline (seeds 0 and 1, tiny members), before any run."""
    tmp = tmp_path_factory.mktemp("committee")
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror))
    (project / "committee").mkdir()
    shutil.copy2(ROOT / "committee" / "dvc.yaml", project / "committee" / "dvc.yaml")
    params = yaml.safe_load((ROOT / "committee" / "params.yaml").read_text())
    params["committee"]["seeds"] = [0, 1]
    params["committee"]["elastic_seeds"] = []
    elastic = yaml.safe_load((ROOT / "committee" / "elastic.yaml").read_text())
    for recipe in (params, elastic):
        recipe["train"].update(TINY_TRAIN)
        recipe["train"]["cnn"]["channels"] = [4]
    params["evaluate"]["gallery_size"] = 4
    (project / "committee" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "committee" / "elastic.yaml").write_text(yaml.safe_dump(elastic, sort_keys=False))
    commit_all(project, "committee")
    return project, project_env(project, mirror)


def test_each_member_is_its_own_stage_and_the_ensemble_averages_them(committee):
    project, env = committee
    listed = run(["dvc", "stage", "list", "--name-only", "committee/dvc.yaml"], project, env).stdout.split()
    assert listed == ["committee/dvc.yaml:member@0", "committee/dvc.yaml:member@1", "committee/dvc.yaml:ensemble"]

    output = run(["dvc", "repro", "committee/dvc.yaml"], project, env).stdout
    assert ran(output) == {"fetch", "preprocess", *listed}, output
    assert not (project / "models" / "model.npz").exists()  # the root's train stage never ran
    lock = yaml.safe_load((project / "committee" / "dvc.lock").read_text())["stages"]
    models = [project / "committee" / "members" / f"seed-{seed}" / "models" / "model.npz" for seed in (0, 1)]
    hashes = [next(out["md5"] for out in lock[f"member@{seed}"]["outs"] if out["path"].endswith("model.npz"))
              for seed in (0, 1)]
    assert hashes[0] != hashes[1]  # two seeds, two members

    # The committee's temperature is the one fitted to the members' averaged probabilities on the validation
    # split; its metrics are those of the average scaled by it: softmax(log(average) / T).
    images, labels = load_prepared(project / "data" / "prepared" / "test.npz")
    val_images, val_labels = load_prepared(project / "data" / "prepared" / "val.npz")
    metrics = committee_metrics(project)
    singles, val_singles = [], []
    for seed, path in zip((0, 1), models):
        network = load_network(path)
        singles.append(network.predict_proba(standardise(images, network.mean, network.std)))  # calibrated
        val_singles.append(network.predict_proba(standardise(val_images, network.mean, network.std)))
        assert metrics["members"][f"seed-{seed}"]["temperature"] == network.temperature
    scaling = calibrate_committee(val_singles, val_labels)
    assert metrics["calibration"] == scaling.summary()
    val_average = (val_singles[0] + val_singles[1]) / np.float32(2)  # the committee on the validation split
    assert metrics["val_accuracy"] == pytest.approx(np.mean(val_average.argmax(axis=1) == val_labels), abs=1e-6)
    temperature = metrics["temperature"]
    assert temperature == scaling.temperature and temperature in (1.0, scaling.fitted)
    average = (singles[0] + singles[1]) / np.float32(2)
    committee_p = scale_probabilities(average, temperature)
    rows = np.arange(len(labels))
    assert metrics["accuracy"] == pytest.approx(np.mean(average.argmax(axis=1) == labels), abs=1e-6)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(committee_p[rows, labels])), abs=1e-5)
    assert metrics["loss_average"] == pytest.approx(-np.mean(np.log(average[rows, labels])), abs=1e-5)
    assert 0 <= metrics["ece"] <= 1 and metrics["samples"] == len(labels)
    assert {"ece_uncalibrated", "loss_uncalibrated", "ece_average"} <= set(metrics)

    # The committee file names the members (relative to it, with their md5) and holds T; predict reading it
    # gives the ensemble stage's probabilities.
    committee_file = project / "committee" / "models" / "committee.json"
    document = json.loads(committee_file.read_text())
    assert document["temperature"] == temperature
    assert [member["path"] for member in document["members"]] == [f"../members/seed-{seed}/models/model.npz"
                                                                  for seed in (0, 1)]
    assert [member["md5"] for member in document["members"]] == hashes  # as DVC recorded them
    predicted = predict.classify(predict.load_models([committee_file]), images)
    np.testing.assert_allclose(predicted, committee_p, rtol=0, atol=1e-6)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(predicted[rows, labels])), abs=1e-5)
    assert set(metrics["members"]) == {"seed-0", "seed-1"}
    for seed, single in zip((0, 1), singles):
        member = metrics["members"][f"seed-{seed}"]
        assert member["accuracy"] == pytest.approx(np.mean(single.argmax(axis=1) == labels), abs=1e-6)
        trained = json.loads((project / "committee" / "members" / f"seed-{seed}" / "metrics" / "train.json")
                             .read_text())
        assert (member["val_accuracy"], member["train_seconds"]) == (trained["val_accuracy"],
                                                                     trained["train_seconds"])
    assert metrics["members_train_seconds"] == pytest.approx(
        sum(member["train_seconds"] for member in metrics["members"].values()), abs=0.011)

    plots = project / "committee" / "dvclive" / "evaluate" / "plots"
    table = json.loads((plots / "custom" / "members.json").read_text())
    assert [row["member"] for row in table] == ["seed-0", "seed-1", "committee"]
    assert [row["accuracy"] for row in table] == [metrics["members"]["seed-0"]["accuracy"],
                                                  metrics["members"]["seed-1"]["accuracy"], metrics["accuracy"]]
    assert table[-1]["val_accuracy"] == metrics["val_accuracy"]
    confusion = json.loads((plots / "sklearn" / "confusion_matrix.json").read_text())
    assert len(confusion) == len(labels)
    assert sum(row["actual"] == row["predicted"] for row in confusion) / len(labels) == pytest.approx(
        metrics["accuracy"], abs=1e-6)  # the committee's confusion, not a member's
    for name in ("confusion_matrix", "reliability", "misclassified"):
        assert (plots / "images" / f"{name}.png").stat().st_size > 0
    assert run(["dvc", "status", "committee/dvc.yaml"], project, env).stdout.strip() == (
        "Data and pipelines are up to date.")
    commit_all(project, "committee of seeds 0 and 1")


def test_changing_one_seed_reruns_only_that_member_and_the_ensemble(committee):
    project, env = committee
    output = run(["dvc", "exp", "run", "committee/dvc.yaml", "-S", "committee/params.yaml:committee.seeds=[0,2]"],
                 project, env).stdout
    assert ran(output) == {"committee/dvc.yaml:member@2", "committee/dvc.yaml:ensemble"}, output
    assert "Stage 'committee/dvc.yaml:member@0' didn't change, skipping" in output
    assert set(committee_metrics(project)["members"]) == {"seed-0", "seed-2"}  # seed-1's folder is left alone
    commit_all(project, "committee of seeds 0 and 2")


def test_members_queued_in_parallel_come_back_from_the_run_cache(committee):
    project, env = committee
    params_file = project / "committee" / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["committee"]["seeds"] = [0, 2, 3]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    run(["dvc", "exp", "run", "--queue", "committee/dvc.yaml:member@3"], project, env)
    run(["dvc", "queue", "start"], project, env)
    wait_for_queue(project, env, baseline, 1)

    output = run(["dvc", "repro", "committee/dvc.yaml"], project, env).stdout
    assert "Stage 'committee/dvc.yaml:member@3' is cached - skipping run, checking out outputs" in output, output
    assert ran(output) == {"committee/dvc.yaml:ensemble"}, output
    assert set(committee_metrics(project)["members"]) == {"seed-0", "seed-2", "seed-3"}


def test_elastic_members_train_on_their_own_recipe_and_join_the_committee(committee):
    project, env = committee
    output = run(["dvc", "exp", "run", "committee/dvc.yaml", "-S", "committee/params.yaml:committee.elastic_seeds=[0]"],
                 project, env).stdout
    assert ran(output) == {"committee/dvc.yaml:elastic@0", "committee/dvc.yaml:ensemble"}, output
    lock = yaml.safe_load((project / "committee" / "dvc.lock").read_text())["stages"]
    recipe = lock["elastic@0"]["params"]["committee/elastic.yaml"]["train"]
    assert recipe["augment"]["elastic_alpha"] > 0
    assert recipe == yaml.safe_load((project / "committee" / "elastic.yaml").read_text())["train"]
    # Same seed as member seed-0, another recipe: another model, and a member of its own.
    models = {name: project / "committee" / "members" / name / "models" / "model.npz"
              for name in ("seed-0", "elastic-seed-0")}
    assert models["seed-0"].read_bytes() != models["elastic-seed-0"].read_bytes()
    members = json.loads((project / "committee" / "models" / "committee.json").read_text())["members"]
    names = [f"seed-{seed}" for seed in yaml.safe_load((project / "committee" / "params.yaml").read_text())
             ["committee"]["seeds"]] + ["elastic-seed-0"]
    assert [member["path"] for member in members] == [f"../members/{name}/models/model.npz" for name in names]
    assert set(committee_metrics(project)["members"]) == set(names)
    assert run(["dvc", "status", "committee/dvc.yaml"], project, env).stdout.strip() == (
        "Data and pipelines are up to date.")


@pytest.mark.parametrize("damage", ["missing train.json", "train.json without its keys", "missing model",
                                    "model not a model file"])
def test_ensemble_with_a_damaged_member_fails_in_one_line_naming_the_file(committee, damage):
    project, env = committee
    member = project / "committee" / "members" / "seed-0"
    target = member / ("metrics/train.json" if "train.json" in damage else "models/model.npz")
    saved = target.with_name(target.name + ".saved")
    target.rename(saved)
    try:
        if damage == "train.json without its keys":
            target.write_text("{}")
        elif damage == "model not a model file":
            target.write_bytes(b"not a zip archive")
        result = run(["python", "stages/ensemble.py"], project, env, check=False)
    finally:
        target.unlink(missing_ok=True)
        saved.rename(target)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and str(target.relative_to(project)) in message[0], result.stderr
