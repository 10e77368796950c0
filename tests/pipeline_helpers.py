"""Build a throw-away copy of the project with a tiny synthetic dataset, for DVC end-to-end tests."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mnist_classification.data.datasets import FILE_NAMES
from mnist_classification.data.idx import encode_idx

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "mnist_classification", "pyproject.toml", ".dvcignore")
# The project's own DVC settings that temp copies share (never its remotes), and the files they name.
DVC_SETTINGS = {"cache": ("type",), "plots": ("html_template",)}
DVC_FILES = ("plots_template.html",)


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images whose class c draws a bar at row 2 + 2c and column 26 - 2c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    rows, cols = 2 + 2 * labels, 26 - 2 * labels
    images[np.arange(n), rows, 4:24] = 255
    images[np.arange(n), 4:24, cols] = 200
    return images, labels.astype(np.uint8)


def write_mirror(folder: Path, n_train: int = 300, n_test: int = 100) -> dict[str, str]:
    """Write the four gzip IDX files of a synthetic dataset; return {file name: SHA-256 of payload}."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = synthetic_images(n_train, 0), synthetic_images(n_test, 1)
    arrays = dict(zip(FILE_NAMES, (train[0], train[1], test[0], test[1])))
    pins = {}
    for name, array in arrays.items():
        payload = encode_idx(array)
        (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        pins[name] = hashlib.sha256(payload).hexdigest()
    return pins


def make_project(tmp: Path, pins: dict[str, str], train_overrides: dict | None = None) -> Path:
    """Copy the project into ``tmp/project`` as a fresh git + DVC repo using the synthetic dataset."""
    project = tmp / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, project / name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["fetch"] = {"dataset": "custom", "custom": {"sha256": pins}}
    params["train"].update({"hidden": [32], "epochs": 3, "batch_size": 32, "warmup_epochs": 0,
                            **(train_overrides or {})})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], project)
    run(["git", "config", "user.email", "test@example.com"], project)
    run(["git", "config", "user.name", "test"], project)
    run(["dvc", "init", "-q"], project)
    copy_dvc_settings(project)
    commit_all(project, "project")
    return project


def copy_dvc_settings(project: Path) -> None:
    """Give the copy the project's cache link types and plots template (``DVC_SETTINGS``), not its remotes."""
    from configobj import ConfigObj  # DVC's own config library

    source, target = ConfigObj(str(ROOT / ".dvc" / "config")), ConfigObj(str(project / ".dvc" / "config"))
    for section, keys in DVC_SETTINGS.items():
        for key in keys:
            if key in source.get(section, {}):
                target.setdefault(section, {})[key] = source[section][key]
    target.write()
    for name in DVC_FILES:
        if (ROOT / ".dvc" / name).is_file():
            shutil.copy2(ROOT / ".dvc" / name, project / ".dvc" / name)


def commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)


def add_local_remote(project: Path, storage: Path, name: str = "storage") -> None:
    """Make a local directory the default DVC remote of ``project`` and commit the config."""
    run(["dvc", "remote", "add", "-d", name, str(storage)], project)
    commit_all(project, f"DVC remote {name}")


def project_env(project: Path, mirror: Path | None) -> dict[str, str]:
    """Environment for DVC commands: the copy's package first on the path, the mirror set."""
    env = dict(os.environ, PYTHONPATH=str(project), DVC_NO_ANALYTICS="1")
    if mirror is not None:
        env["DATASET_MIRROR"] = str(mirror)
    return env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure with ``check``, raise showing both streams."""
    if cmd[0] == "python":
        cmd = [sys.executable, *cmd[1:]]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def reproduced_project(tmp: Path) -> tuple[Path, Path, dict[str, str], subprocess.CompletedProcess]:
    """A synthetic project under ``tmp`` after one `dvc repro`: (project, mirror, env, repro result)."""
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror))
    env = project_env(project, mirror)
    return project, mirror, env, run(["dvc", "repro"], project, env)


def wait_for_queue(project: Path, env: dict, baseline: str, count: int, timeout: float = 300) -> None:
    """Wait until ``count`` experiments of ``baseline`` are saved and the queue is idle; fail fast on a failure.

    Polls the experiments' git refs (cheap); `dvc queue status` costs a second of CPU, so it runs only now
    and then and once at the end.
    """
    prefix = f"refs/exps/{baseline[:2]}/{baseline[2:]}/"
    start = last_status = time.monotonic()
    while True:
        saved = len(run(["git", "for-each-ref", "--format=%(refname)", prefix], project).stdout.split())
        now = time.monotonic()
        if saved >= count or now - last_status > 10 or now - start > timeout:
            status = run(["dvc", "queue", "status"], project, env).stdout
            tasks = status.split("Worker status")[0]
            if "Failed" in tasks or now - start > timeout:
                logs = [run(["dvc", "queue", "logs", line.split()[1]], project, env, check=False).stdout
                        for line in tasks.splitlines()[1:] if "Failed" in line]
                raise AssertionError(f"queue did not finish:\n{status}\n" + "\n".join(logs))
            if saved >= count and "Running" not in tasks and "Queued" not in tasks:
                return
            last_status = now
        time.sleep(0.5)
