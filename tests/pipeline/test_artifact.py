"""The trained model as a DVC artifact: released with a model-registry git tag, fetched by name and version.

In a throw-away repository with a local-directory DVC remote, two trained models are released as
mnist-classifier v1.0.0 and v1.1.0 (`gto register` writes the git tags ``mnist-classifier@vX.Y.Z``, as
the README says); with the local cache removed, so only the remote holds the data, `dvc artifacts get`
fetches each version by name, and `predict --model` classifies digits with the fetched file.
"""

from __future__ import annotations

import csv
import hashlib
import shutil

import numpy as np
import yaml
from pipeline_helpers import add_local_remote, commit_all, reproduced_project, run, synthetic_images

NAME = "mnist-classifier"


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _release(project, env, version: str) -> str:
    run(["gto", "register", NAME, "--version", version], project, env)
    return _md5(project / "models" / "model.npz")


def test_dvc_yaml_declares_the_model_artifact(tmp_path):
    project, _, _, _ = reproduced_project(tmp_path)
    artifact = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"][NAME]
    assert artifact["path"] == "models/model.npz" and artifact["type"] == "model"
    assert artifact["desc"] and artifact["labels"]


def test_released_versions_are_fetched_by_name_and_predict(tmp_path):
    project, _, env, _ = reproduced_project(tmp_path)
    add_local_remote(project, tmp_path / "storage")  # commits the reproduced project too
    run(["dvc", "push"], project, env)
    first = _release(project, env, "v1.0.0")

    run(["dvc", "exp", "run", "-S", "train.lr=0.003"], project, env)  # a second, different model
    commit_all(project, "second model")
    run(["dvc", "push"], project, env)
    second = _release(project, env, "v1.1.0")
    assert first != second
    tags = run(["git", "tag"], project).stdout.split()
    assert {f"{NAME}@v1.0.0", f"{NAME}@v1.1.0"} <= set(tags)

    shutil.rmtree(project / ".dvc" / "cache")  # only the remote has the models now
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    run(["dvc", "artifacts", "get", str(project), NAME, "--rev", "v1.0.0", "-o", "v1.npz"], consumer, env)
    run(["dvc", "artifacts", "get", str(project), NAME, "-o", "latest.npz"], consumer, env)
    assert _md5(consumer / "v1.npz") == first
    assert _md5(consumer / "latest.npz") == second  # no version given: the highest one

    images, labels = synthetic_images(20, seed=7)
    np.save(consumer / "digits.npy", images)
    run(["python", "-m", "mnist_classification", "predict", "--model", "v1.npz", "digits.npy",
         "--output", "predictions.csv"], consumer, env)
    with open(consumer / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    predicted = [int(row["predicted"]) for row in rows]
    assert len(predicted) == 20 and np.mean(np.array(predicted) == labels) >= 0.9  # easy synthetic classes
