"""End to end: `dvc repro` on a tiny synthetic dataset served through DATASET_MIRROR."""

import json
import math

import pytest
import yaml
from pipeline_helpers import reproduced_project, run

from mnist_classification.nn.network import load_network

STAGES = ("fetch", "preprocess", "train", "evaluate")


def ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project, _, env, first = reproduced_project(tmp_path_factory.mktemp("e2e"))
    return project, env, first


def test_repro_runs_every_stage_and_writes_every_output(project):
    project, env, first = project
    assert ran(first.stdout) == set(STAGES)
    for path in ["data/raw/train-images-idx3-ubyte.gz", "data/raw/dataset.json", "data/prepared/train.npz",
                 "data/prepared/meta.json", "models/model.npz", "plots/history.csv", "dvclive/train/metrics.json",
                 "dvclive/train/plots/metrics/val/accuracy.tsv", "dvclive/evaluate/plots/sklearn/confusion_matrix.json",
                 "dvclive/evaluate/plots/images/loss_curve.png", "dvclive/evaluate/plots/images/accuracy_plot.png",
                 "dvclive/evaluate/plots/images/confusion_matrix.png",
                 "dvclive/evaluate/plots/images/misclassified.png",
                 "dvclive/evaluate/plots/images/reliability.png", "metrics/train.json", "metrics/eval.json",
                 "dvc.lock"]:
        assert (project / path).is_file(), path
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert evaluation["accuracy"] > 0.5  # the synthetic classes are easy
    assert {"loss", "macro_precision", "macro_recall", "macro_f1", "per_class"} <= set(evaluation)
    history = (project / "plots/history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr"
    assert len(history) == 1 + 3
    # DVCLive's per-epoch history (step = epoch) and its record of the last epoch, as dvc exp show reads it
    live_history = (project / "dvclive/train/plots/metrics/val/accuracy.tsv").read_text().splitlines()
    assert live_history[0] == "step\taccuracy" and [row.split("\t")[0] for row in live_history[1:]] == ["1", "2", "3"]
    live = json.loads((project / "dvclive/train/metrics.json").read_text())
    assert live["step"] == 3 and set(live) == {"step", "train", "val", "lr"}
    assert float(live_history[-1].split("\t")[1]) == live["val"]["accuracy"]
    confusion = json.loads((project / "dvclive/evaluate/plots/sklearn/confusion_matrix.json").read_text())
    assert len(confusion) == 100 and set(confusion[0]) == {"actual", "predicted"}


def test_the_fitted_temperature_is_stored_in_the_model_and_used_by_evaluate(project):
    project, _, _ = project
    calibration = json.loads((project / "metrics/train.json").read_text())["calibration"]
    assert set(calibration) == {"temperature", "fitted_temperature", "nll_before", "nll_after", "ece_before",
                                "ece_after"}
    assert calibration["temperature"] in (1.0, calibration["fitted_temperature"])
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert load_network(project / "models/model.npz").temperature == evaluation["temperature"] == \
        calibration["temperature"]
    assert {"ece", "ece_uncalibrated", "loss_uncalibrated"} <= set(evaluation)


def test_second_repro_reruns_nothing(project):
    project, env, _ = project
    again = run(["dvc", "repro"], project, env)
    assert ran(again.stdout) == set()


def test_metrics_show_reads_both_metric_files(project):
    project, env, _ = project
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project, env).stdout)
    data = next(iter(shown.values()))["data"]
    assert "metrics/eval.json" in data and "metrics/train.json" in data


def test_forced_repro_is_byte_identical_but_for_the_timings(project):
    project, env, _ = project
    before = yaml.safe_load((project / "dvc.lock").read_text())
    run(["dvc", "repro", "-f"], project, env)
    after = yaml.safe_load((project / "dvc.lock").read_text())

    def hashes(lock):
        return {(stage, out["path"]): out["md5"] for stage, spec in lock["stages"].items()
                for out in spec.get("outs", [])}

    old, new = hashes(before), hashes(after)
    changed = {path for (stage, path), md5 in old.items() if new[(stage, path)] != md5}
    assert changed == {"metrics/train.json"}


def test_changing_lr_reruns_only_train_and_evaluate(project):
    project, env, _ = project
    # DVC writes 0.00005 as 5e-05, which PyYAML's default loader reads as a string.
    result = run(["dvc", "exp", "run", "-S", "train.lr=0.00005"], project, env)
    assert ran(result.stdout) == {"train", "evaluate"}
    assert "lr: 5e-05" in (project / "params.yaml").read_text()
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    recorded = [experiment["revs"][0]["data"] for row in shown for experiment in row.get("experiments") or []]
    assert [data["params"]["params.yaml"]["data"]["train"]["lr"] for data in recorded] == [5e-05]
    assert 0 < recorded[0]["metrics"]["metrics/eval.json"]["data"]["accuracy"] <= 1


def test_changing_val_fraction_does_not_refetch(project):
    project, env, _ = project
    params = (project / "params.yaml").read_text().replace("val_fraction: 0.1", "val_fraction: 0.2")
    (project / "params.yaml").write_text(params)
    result = run(["dvc", "repro"], project, env)
    assert ran(result.stdout) == {"preprocess", "train", "evaluate"}


def test_calibrate_false_keeps_temperature_one(project):
    project, env, _ = project
    result = run(["dvc", "exp", "run", "-S", "train.calibrate=false"], project, env)
    assert ran(result.stdout) == {"train", "evaluate"}
    assert json.loads((project / "metrics/train.json").read_text())["calibration"] == {"temperature": 1.0}
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert evaluation["temperature"] == load_network(project / "models/model.npz").temperature == 1.0
    assert evaluation["ece"] == evaluation["ece_uncalibrated"]


def test_mirror_average_and_label_smoothing_reach_the_train_stage(project):
    project, env, _ = project
    result = run(["dvc", "exp", "run", "-S", "train.mirror_average=true", "-S", "train.label_smoothing=0.2"],
                 project, env)
    assert ran(result.stdout) == {"train", "evaluate"}
    metrics = json.loads((project / "metrics/train.json").read_text())
    mirror = metrics["mirror_average"]
    assert set(mirror) == {"kept", "val_accuracy", "val_loss"}
    assert set(mirror["val_accuracy"]) == set(mirror["val_loss"]) == {"plain", "mirrored"}
    # The stage's choice follows its rule and is what the model file carries into evaluate and predict.
    accuracy, loss = mirror["val_accuracy"], mirror["val_loss"]
    assert mirror["kept"] == ((accuracy["mirrored"], -loss["mirrored"]) > (accuracy["plain"], -loss["plain"]))
    assert load_network(project / "models/model.npz").mirror_average is mirror["kept"]
    # Smoothed targets with e = 0.2 over K classes: no prediction gets the training loss below their entropy.
    k = len(load_network(project / "models/model.npz").classes)
    top, rest = 1 - 0.2 + 0.2 / k, 0.2 / k
    entropy = -(top * math.log(top) + (k - 1) * rest * math.log(rest))
    assert metrics["train_loss"] >= entropy
