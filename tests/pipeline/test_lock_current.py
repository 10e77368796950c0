"""The committed dvc.lock records the committed code and params.

The metrics, plots and README results come from the run that dvc.lock
describes. If a stage's code or params change without a `dvc repro`, the lock
goes stale: a fresh clone's `dvc repro` would retrain instead of reproducing the
committed results, and `dvc metrics diff` would compare against numbers no
code in the repository produced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from mnist_classification.infra.params import load_yaml

ROOT = Path(__file__).resolve().parents[2]
STALE = "dvc.lock is stale; run `dvc repro` and commit dvc.lock, metrics/ and plots/"


def _lock_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]


def _outputs(stages: dict) -> set[str]:
    return {out["path"] for stage in stages.values() for out in stage.get("outs", [])}


def _lookup(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        value = value[key]
    return value


def test_code_deps_match_the_lock():
    stages = _lock_stages()
    produced = _outputs(stages)
    checked = 0
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            if dep["path"] in produced:
                continue
            content = (ROOT / dep["path"]).read_bytes()
            assert (hashlib.md5(content).hexdigest(), len(content)) == (dep["md5"], dep["size"]), \
                f"{STALE}: stage {name!r} ran with another version of {dep['path']}"
            checked += 1
    assert checked >= len(stages)  # every stage runs at least its own script


def test_params_match_the_lock():
    params = load_yaml((ROOT / "params.yaml").read_text(), "params.yaml")  # YAML 1.2, as DVC reads it
    for name, stage in _lock_stages().items():
        for dotted, value in stage.get("params", {}).get("params.yaml", {}).items():
            assert _lookup(params, dotted) == value, \
                f"{STALE}: stage {name!r} ran with another value of params key {dotted!r}"
