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
STALE = "{lock} is stale; run `dvc repro{target}` and commit {lock} with the metrics and plots it records"
#: The lock files of the project's pipelines, with the `dvc repro` target that rewrites each; the
#: committee's is checked once it is committed.
LOCKS = {"dvc.lock": "", "committee/dvc.lock": " committee/dvc.yaml"}


def _locks() -> list[tuple[str, dict]]:
    """(message prefix, stages) of each committed lock file."""
    return [(STALE.format(lock=lock, target=target), yaml.safe_load((ROOT / lock).read_text())["stages"])
            for lock, target in LOCKS.items() if (ROOT / lock).is_file()]


def _outputs() -> set[str]:
    """Every output path recorded in any lock file (paths are relative to the project root)."""
    return {out["path"] for _, stages in _locks() for stage in stages.values() for out in stage.get("outs", [])}


def _lookup(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        value = value[key]
    return value


def test_code_deps_match_the_lock():
    produced = _outputs()
    for stale, stages in _locks():
        checked = 0
        for name, stage in stages.items():
            for dep in stage.get("deps", []):
                if any(dep["path"] == out or out.startswith(dep["path"] + "/") for out in produced):
                    continue  # data made by a stage (or a folder of stages' outputs), not code
                content = (ROOT / dep["path"]).read_bytes()
                assert (hashlib.md5(content).hexdigest(), len(content)) == (dep["md5"], dep["size"]), \
                    f"{stale}: stage {name!r} ran with another version of {dep['path']}"
                checked += 1
        assert checked >= len(stages)  # every stage runs at least its own script


def test_params_match_the_lock():
    for stale, stages in _locks():
        for name, stage in stages.items():
            for file, values in stage.get("params", {}).items():
                params = load_yaml((ROOT / file).read_text(), file)  # YAML 1.2, as DVC reads it
                for dotted, value in values.items():
                    assert _lookup(params, dotted) == value, \
                        f"{stale}: stage {name!r} ran with another value of params key {dotted!r} of {file}"
