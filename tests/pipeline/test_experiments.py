"""Experiments the DVC way, as docs/experiments.md documents them, in a temporary git + DVC repository.

One module-scoped sweep (a 2 x 2 grid of learning rate x hidden width, queued and run by two queue workers
on the tiny synthetic dataset) feeds every test: the trimmed `dvc exp show`, metrics/params diffs between
experiments and between commits, `dvc plots diff` over the sweep, sharing through a local-directory
remote, the cache link type, and finally `dvc gc` of removed experiments. The tests run in file order and
only the last one removes anything.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from configobj import ConfigObj
from pipeline_helpers import (
    ROOT,
    add_local_remote,
    commit_all,
    make_project,
    project_env,
    run,
    wait_for_queue,
    write_mirror,
)

# The documented sweep: learning rate x hidden width, queued, then run two at a time.
GRID = ["-S", "train.lr=0.0005,0.005", "-S", "train.hidden=[16],[64]"]
COMBINATIONS = {(0.0005, (16,)), (0.0005, (64,)), (0.005, (16,)), (0.005, (64,))}
# The documented `dvc exp show` trims: drop what does not vary and the hashes, or keep only a few columns.
SHOW_CHANGED = ["dvc", "exp", "show", "--md", "--no-pager", "--only-changed",
                "--drop", r"Created|State|Executor|.*/|per_class\.|.*second|peak_memory"]
SHOW_KEPT = ["dvc", "exp", "show", "--md", "--no-pager", "--drop", ".*",
             "--keep", r"Experiment|train\.(lr|hidden)$|(val_)?(accuracy|loss)$|macro_f1$"]


def table_columns(markdown: str) -> list[str]:
    return [cell.strip() for cell in markdown.splitlines()[0].strip("|").split("|")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A committed baseline and the four experiments of the documented grid, run by `dvc queue start -j 2`."""
    tmp = tmp_path_factory.mktemp("experiments")
    mirror = tmp / "mirror"
    project = make_project(tmp, write_mirror(mirror), {"epochs": 2})
    env = project_env(project, mirror)
    run(["dvc", "repro"], project, env)
    commit_all(project, "baseline")
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    queued = run(["dvc", "exp", "run", "--queue", *GRID], project, env).stdout
    assert queued.count("Queued experiment") == 4, queued
    started = time.monotonic()
    run(["dvc", "queue", "start", "-j", "2"], project, env)
    wait_for_queue(project, env, baseline, 4)
    print(f"4 queued experiments with -j 2: {time.monotonic() - started:.1f} s")

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    row = next(entry for entry in shown if entry["rev"] == baseline)
    experiments = {}
    for experiment in row["experiments"]:
        data = experiment["revs"][0]["data"]
        train = data["params"]["params.yaml"]["data"]["train"]
        experiments[experiment["name"]] = {
            "params": (train["lr"], tuple(train["hidden"])),
            "accuracy": data["metrics"]["metrics/eval.json"]["data"]["accuracy"],
            "model": data["outs"]["models/model.npz"]["hash"],
            "state": experiment["executor"]["state"] if experiment["executor"] else None,
        }
    return {"tmp": tmp, "mirror": mirror, "project": project, "env": env, "baseline": baseline,
            "experiments": experiments}


def test_grid_is_queued_and_run_by_two_workers(sweep):
    experiments = sweep["experiments"]
    assert {exp["params"] for exp in experiments.values()} == COMBINATIONS
    assert {exp["state"] for exp in experiments.values()} == {"success"}
    status = run(["dvc", "queue", "status"], sweep["project"], sweep["env"]).stdout
    assert status.count("Success") == 4 and "Failed" not in status and "Queued" not in status, status
    # The queue ran in temporary copies: the workspace still holds the baseline.
    assert run(["git", "status", "--porcelain"], sweep["project"]).stdout == ""


def test_exp_show_trimmed_to_params_and_metrics(sweep):
    project, env = sweep["project"], sweep["env"]
    changed = run(SHOW_CHANGED, project, env).stdout
    columns = table_columns(changed)
    assert {"Experiment", "train.lr", "train.hidden", "accuracy", "val_accuracy", "macro_f1"} <= set(columns)
    # No hashes (dependency and output columns are paths), no constant params, no timings or per-class rows.
    assert not [c for c in columns if "/" in c or c.startswith(("per_class", "fetch.", "preprocess."))], columns
    assert not {"Created", "State", "Executor", "train.epochs", "train_seconds", "samples_per_second"} & set(columns)
    assert all(name in changed for name in sweep["experiments"])

    kept = run(SHOW_KEPT, project, env).stdout
    assert table_columns(kept) == ["Experiment", "val_accuracy", "val_loss", "accuracy", "loss", "macro_f1",
                                   "train.hidden", "train.lr"]
    assert len(kept.strip().splitlines()) == 2 + 2 + 4  # header, rule, workspace, baseline, four experiments


def test_metrics_and_params_diff_between_experiments(sweep):
    project, env = sweep["project"], sweep["env"]
    first, second = sorted(sweep["experiments"], key=lambda name: sweep["experiments"][name]["params"])[:2]
    params = json.loads(run(["dvc", "params", "diff", first, second, "--json"], project, env).stdout)
    # Same learning rate, other width (DVC prints list values as strings).
    assert {key: {side: str(value) for side, value in change.items()}
            for key, change in params["params.yaml"].items()} == {"train.hidden": {"old": "[16]", "new": "[64]"}}
    metrics = json.loads(run(["dvc", "metrics", "diff", "HEAD", first, "--json"], project, env).stdout)
    accuracy = metrics["metrics/eval.json"]["accuracy"]
    assert accuracy["new"] == sweep["experiments"][first]["accuracy"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])


def test_metrics_and_params_diff_between_commits(sweep):
    project, env = sweep["project"], sweep["env"]
    best = max(sweep["experiments"], key=lambda name: sweep["experiments"][name]["accuracy"])
    run(["dvc", "exp", "branch", best, "sweep-best"], project, env)  # the experiment as a git commit
    assert run(["git", "rev-parse", "sweep-best~1"], project).stdout.strip() == sweep["baseline"]
    params = json.loads(run(["dvc", "params", "diff", "HEAD", "sweep-best", "--json"], project, env).stdout)
    lr, _ = sweep["experiments"][best]["params"]
    assert (params["params.yaml"]["train.lr"]["old"], params["params.yaml"]["train.lr"]["new"]) == (0.001, lr)
    metrics = json.loads(run(["dvc", "metrics", "diff", "HEAD", "sweep-best", "--json"], project, env).stdout)
    assert metrics["metrics/eval.json"]["accuracy"]["new"] == sweep["experiments"][best]["accuracy"]
    assert {"metrics/eval.json", "metrics/train.json"} <= set(metrics)


def test_plots_diff_overlays_every_experiment(sweep):
    project, env, names = sweep["project"], sweep["env"], sorted(sweep["experiments"])
    out = sweep["tmp"] / "sweep_plots"
    run(["dvc", "plots", "diff", "HEAD", *names, "-o", str(out)], project, env)
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr.net/npm/vega@5.20.2" not in page  # the project's offline template was used
    specs = {plot_id: json.loads(spec)
             for spec, plot_id in re.findall(r"var spec = (.*?);\s*vegaEmbed\('#([^']+)'", page, re.DOTALL)}
    assert set(specs) == {"Loss", "Accuracy", "Learning_rate", "Confusion", "Reliability"}
    for plot_id, spec in specs.items():  # one overlaid curve (or confusion facet) per experiment
        assert {value["rev"] for value in spec["data"]["values"]} == {"HEAD", *names}, plot_id
    confusion = specs["Confusion"]["data"]["values"]
    assert all(sum(value["rev"] == name for value in confusion) == 100 for name in names)  # 100 test images
    for name in names:  # and every experiment's own figures
        assert (out / "static" / f"{name}_dvclive_evaluate_plots_images_confusion_matrix.png").is_file()


def test_cache_links_outputs_instead_of_copying(sweep):
    project = sweep["project"]
    for repo in (ROOT, project):  # the project's setting, which the temporary copy shares
        assert ConfigObj(str(repo / ".dvc" / "config"))["cache"]["type"] == "reflink,hardlink,copy"
    assert_linked_from_cache(project / "models" / "model.npz", sweep["tmp"])


def assert_linked_from_cache(path: Path, scratch: Path) -> None:
    """The output shares its storage with the cache: a read-only hardlink, or else a reflink copy."""
    info = path.stat()
    if info.st_nlink >= 2:
        assert not info.st_mode & 0o222, "hardlinked outputs must be read-only"
        return
    probe = subprocess.run(["cp", "--reflink=always", str(path), str(scratch / "reflink-probe")],
                           capture_output=True, check=False)
    assert probe.returncode == 0, f"{path} is a plain copy although the file system has no reflinks"


def test_push_clone_pull_reproduces_nothing(sweep):
    project, env, tmp = sweep["project"], sweep["env"], sweep["tmp"]
    add_local_remote(project, tmp / "dvc-storage")
    run(["dvc", "push"], project, env)

    clone = tmp / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp)
    clone_env = project_env(clone, None)  # no dataset mirror: nothing may be fetched again
    run(["dvc", "pull"], clone, clone_env)
    assert (clone / "models" / "model.npz").is_file() and (clone / "data" / "prepared" / "train.npz").is_file()
    assert_linked_from_cache(clone / "models" / "model.npz", tmp)

    again = run(["dvc", "repro"], clone, clone_env)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout, again.stdout
    assert json.loads(run(["dvc", "metrics", "diff", "--json"], clone, clone_env).stdout) == {}
    assert run(["git", "status", "--porcelain"], clone).stdout == ""


def test_gc_keeps_workspace_and_remaining_experiments(sweep):
    project, env, experiments = sweep["project"], sweep["env"], sweep["experiments"]
    removed, *kept = sorted(experiments)
    run(["dvc", "exp", "remove", removed], project, env)
    run(["dvc", "gc", "--workspace", "--all-experiments", "--force"], project, env)

    def cached(md5: str) -> bool:
        return (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()

    assert not cached(experiments[removed]["model"])
    assert all(cached(experiments[name]["model"]) for name in kept)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (model,) = [out for out in lock["stages"]["train"]["outs"] if out["path"] == "models/model.npz"]
    assert cached(model["md5"])
