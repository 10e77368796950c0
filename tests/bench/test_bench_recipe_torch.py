"""The recipe benchmark trains in PyTorch what the train stage trains, as the stage does (timings unchecked).

Skipped when PyTorch is not installed (it is only in the ``bench`` extra)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_recipe_torch
from bench_torch import torch_network

from mnist_classification.infra.atomic import save_npz, write_json
from mnist_classification.infra.errors import PipelineError
from mnist_classification.nn.network import build_network
from mnist_classification.nn.optimizers import make_optimizer
from mnist_classification.nn.schedules import Schedule
from mnist_classification.nn.training import train


@pytest.fixture
def prepared(tmp_path):
    """A tiny prepared dataset: 64 training, 24 validation and 20 test images of random pixels."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("val", 24), ("test", 20)):
        save_npz(tmp_path / f"{split}.npz", {"images": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
                                             "labels": rng.integers(0, 10, count, dtype=np.uint8)})
    write_json(tmp_path / "meta.json", {"mean": 0.45, "std": 0.3, "classes": [str(d) for d in range(10)]})
    return tmp_path


def test_recipe_is_composed_as_exp_run_composes_it():
    p = bench_recipe_torch.recipe("cnn-fast")
    assert (p["model"], p["epochs"], p["lr"], p["augment"]["enabled"]) == ("cnn", 6, 0.002, True)
    assert bench_recipe_torch.recipe("cnn-fast", epochs=1)["epochs"] == 1
    with pytest.raises(PipelineError, match="no .*cnn-fastest.yaml; known recipes: cnn, cnn-fast"):
        bench_recipe_torch.recipe("cnn-fastest")
    with pytest.raises(PipelineError, match=r"-S train.epochs=0: train.epochs is 0"):
        bench_recipe_torch.recipe("cnn-fast", epochs=0)


@pytest.mark.parametrize(("override", "refusal"), [
    ("optimizer: sgd", "train.optimizer is 'sgd'; this benchmark runs adam"),
    ("mirror_average: true", "train.mirror_average is true; this benchmark scores plain predictions only"),
])
def test_recipes_it_cannot_run_as_the_stage_does_are_refused(tmp_path, monkeypatch, override, refusal):
    conf = tmp_path / "conf"
    shutil.copytree(bench_recipe_torch.CONF, conf)
    (conf / "train" / "other.yaml").write_text(f"defaults:\n  - cnn-fast\n  - _self_\n{override}\n")
    monkeypatch.setattr(bench_recipe_torch, "CONF", conf)
    assert bench_recipe_torch.recipe("cnn-fast")["epochs"] == 6  # the copied recipes compose as before
    with pytest.raises(PipelineError, match=f"--config other: {re.escape(refusal)}"):
        bench_recipe_torch.recipe("other")


def test_cnn_starts_from_the_projects_weights(prepared):
    p = bench_recipe_torch.recipe("cnn-fast")
    splits = bench_recipe_torch.load_splits(prepared)
    network = build_network(p, (28, 28), splits["meta"]["classes"], 0.45, 0.3)
    model = torch_network(network)
    assert bench_recipe_torch.initial_difference(network, model, splits["val"][0]) < 1e-4
    # Weight decay on the convolutions' and dense layers' weights only, as the project decays them.
    decayed, plain = bench_recipe_torch.adam(model, network, {**p, "weight_decay": 0.01}).param_groups
    weights = {id(m.weight) for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {id(t) for t in decayed["params"]} == weights and decayed["weight_decay"] == 0.01
    assert not weights & {id(t) for t in plain["params"]} and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_an_epoch_trains_both_alike(prepared):
    # Without dropout (whose masks differ) and augmentation, one epoch of the loop - the same batches,
    # the warm-up schedule per step, Adam with weight decay on the weights only - leaves equal networks.
    p = bench_recipe_torch.recipe("mlp", epochs=1)
    p.update(dropout=0.0, batch_size=16, weight_decay=0.01)
    splits = bench_recipe_torch.load_splits(prepared)
    network = build_network(p, (28, 28), splits["meta"]["classes"], 0.45, 0.3)
    model = torch_network(network)
    ours = train(network, make_optimizer("adam", p["lr"], p["momentum"], p["weight_decay"]),
                 Schedule(p["schedule"], p["lr"], 1, p["warmup_epochs"]), *splits["train"], *splits["val"],
                 1, 16, 0, np.random.default_rng([p["seed"], 2]), progress=False)
    theirs = bench_recipe_torch.train(model, bench_recipe_torch.adam(model, network, p), p, splits, None)
    assert theirs["history"][0]["lr"] == pytest.approx(ours.history[0]["lr"]) == p["lr"]
    assert theirs["history"][0]["train_loss"] == pytest.approx(ours.history[0]["train_loss"], rel=1e-5)
    assert bench_recipe_torch.initial_difference(network, model, splits["test"][0]) < 1e-4


def test_command_reports_every_figure(prepared):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_recipe_torch.py"), "--data", str(prepared), "--epochs", "1",
         "--threads", "1", "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(out.stdout)
    r = report["results"]["cnn-fast"]
    assert (r["epochs"], r["epochs_run"], r["best_epoch"], r["train_images"]) == (1, 1, 1, 64)
    assert r["initial_logit_difference"] < 1e-4
    assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 and r["test_loss"] > 0
    assert r["train_seconds"] > 0 and r["samples_per_second"] > 0 and r["peak_memory_mib"] > 0
    assert [set(row) for row in r["history"]] == [
        {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}]
    assert report["machine"]["torch"].startswith("2.13") and report["machine"]["torch_threads"] == 1


def test_a_bad_recipe_name_is_one_line():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_recipe_torch.py"), "--config", "nope"],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "known recipes" in out.stderr
