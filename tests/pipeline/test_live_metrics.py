"""DVCLive in the pipeline: a queued experiment's epochs show in `dvc exp show` while it still runs.

The train stage logs each epoch through DVCLive to dvclive/train/ (metrics.json, declared as metrics in
dvc.yaml, and one TSV per metric under plots/); `dvc exp show --json` reads a running experiment's temporary
workspace, so its step (the latest epoch) must be seen to move before the experiment ends.
"""

from __future__ import annotations

import json
import subprocess
import time

from pipeline_helpers import commit_all, make_project, project_env, run, write_mirror

LIVE = "dvclive/train/metrics.json"
EPOCHS = 300  # about 15 ms each on 3,000 synthetic images: long enough to watch, short enough to wait for


#: Seconds one `dvc exp show` may take. DVC's git backend (pygit2 1.21) can deadlock reading a blob
#: (pygit2 issue 1488, "BlobIO cleanup deadlock"); a poll that hangs is killed and counts as failed.
SHOW_TIMEOUT = 60


def _exp_show(project, env) -> subprocess.CompletedProcess | None:
    """`dvc exp show --json`, or None when it hangs past SHOW_TIMEOUT (it is killed)."""
    try:
        return subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=SHOW_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None


def _running_steps(project, env) -> tuple[list[int], bool]:
    """The live step of every running experiment, and whether any experiment has finished."""
    result = _exp_show(project, env)
    if result is None:
        return [], False
    if result.returncode != 0:
        # DVC fails now and then while a finishing experiment's temporary workspace is being removed
        # ("No such file or directory: .dvc/tmp/exps/tmp..."); the next poll sees the finished experiment.
        # Or pygit2 misses an object of that workspace ("object not found"), or DVC finds its .dvc
        # folder gone ("directory '.../.dvc/tmp/exps/tmp.../.dvc' does not exist").
        assert any(sign in result.stderr for sign in ("No such file or directory", "object not found",
                                                       "does not exist")), result.stderr
        return [], False
    shown = json.loads(result.stdout)
    steps, finished = [], False
    for row in shown:
        for experiment in row.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            finished |= state in ("success", "failed")
            metrics = (experiment["revs"][0].get("data") or {}).get("metrics") or {}
            step = (metrics.get(LIVE) or {}).get("data", {}).get("step")
            if state == "running" and step is not None:
                steps.append(step)
    return steps, finished


def test_queued_experiment_shows_its_epochs_while_it_runs(tmp_path):
    mirror = tmp_path / "mirror"
    project = make_project(tmp_path, write_mirror(mirror, n_train=3000), {"epochs": 2, "patience": 0})
    env = project_env(project, mirror)
    run(["dvc", "repro"], project, env)
    commit_all(project, "baseline: 2 epochs, so its live step is 2")

    run(["dvc", "exp", "run", "--queue", "-S", f"train.epochs={EPOCHS}"], project, env)
    # Not through run(): the worker it starts would hold run()'s output pipes open until the queue is done.
    subprocess.run(["dvc", "queue", "start"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120, check=True)
    seen, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        steps, finished = _running_steps(project, env)
        seen += [step for step in steps if 2 < step < EPOCHS]  # mid-run: neither the baseline's nor the end
        if finished:
            break
        time.sleep(0.2)
    assert len(set(seen)) >= 2, f"live steps seen while running: {seen}"
    assert seen == sorted(seen)

    for _ in range(3):  # after the run, retried only if DVC hangs (see SHOW_TIMEOUT)
        final = _exp_show(project, env)
        if final is not None:
            break
    assert final is not None and final.returncode == 0, final and final.stderr
    shown = json.loads(final.stdout)
    done = [experiment for row in shown for experiment in row.get("experiments") or []]
    assert [(experiment.get("executor") or {}).get("state", "success") for experiment in done] == ["success"]
    metrics = done[0]["revs"][0]["data"]["metrics"]
    assert metrics[LIVE]["data"]["step"] == EPOCHS
    assert metrics["metrics/train.json"]["data"]["epochs_run"] == EPOCHS
