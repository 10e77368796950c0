"""``sweep`` against real servers on 127.0.0.1: an S3 store (``rclone serve s3``) as the DVC remote, a bare git
repository as the git remote, and Dask clusters (the embedded local one, and ``dask scheduler`` with two
``dask worker`` processes, plain and over TLS), on the tiny synthetic dataset.

One project (a reproduced baseline, its bare git remote, its prefix in the S3 store) serves every test; each
sweep names its experiments with its own prefix.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import run
from sweep_helpers import (
    BUCKET,
    SECRET_KEY,
    exp_refs,
    free_port,
    make_certificates,
    start_dask,
    start_s3,
    stop,
    sweep,
    sweep_project,
    tls_options,
)

from mnist_classification.infra.errors import PipelineError
from mnist_classification.tools.sweep import expand_grid

GRID = ["-S", "train.lr=0.001,0.003", "-S", "train.hidden=[16],[24]"]
COMBINATIONS = {(0.001, (16,)), (0.001, (24,)), (0.003, (16,)), (0.003, (24,))}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The S3 store and the project: {"store": root folder, "project", "env", "remote": bare git repo}."""
    tmp = tmp_path_factory.mktemp("sweep")
    process, endpoint = start_s3(tmp / "s3", tmp / "rclone.log")
    project, env, remote = sweep_project(tmp, endpoint)
    yield {"store": tmp / "s3", "project": project, "env": env, "remote": remote}
    stop(process)


def experiments(project: Path, env: dict, prefix: str) -> dict[str, dict]:
    """{name: {"params": (lr, hidden), "accuracy", "outs": {path: hash}, "json"}} of the experiments named
    ``prefix``-N."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    found = {}
    for row in shown:
        for experiment in row.get("experiments") or []:
            if not experiment["name"].startswith(f"{prefix}-"):
                continue
            data = experiment["revs"][0]["data"]
            train = data["params"]["params.yaml"]["data"]["train"]
            found[experiment["name"]] = {
                "params": (train["lr"], tuple(train["hidden"])),
                "accuracy": data["metrics"]["metrics/eval.json"]["data"]["accuracy"],
                "outs": {path: out["hash"] for path, out in data["outs"].items() if out.get("hash")},
                "json": json.dumps(experiment),
            }
    return found


def named(git_dir: Path, prefix: str) -> list[str]:
    """The names of the experiments named ``prefix``-N on the git remote, sorted."""
    return sorted(name for name in (ref.rsplit("/", 1)[1] for ref in exp_refs(git_dir)) if name.startswith(f"{prefix}-"))


def store_files(servers) -> set[Path]:
    return {path for path in servers["store"].rglob("*") if path.is_file()}


def assert_outputs_in_store(servers, found: dict[str, dict]) -> None:
    """Every cached output of every experiment is in the S3 store (nothing half-pushed)."""
    prefix = servers["store"] / BUCKET / servers["project"].parent.name / "files" / "md5"
    for name, experiment in found.items():
        for path, digest in experiment["outs"].items():
            if path.startswith(("models/", "data/")):
                assert (prefix / digest[:2] / digest[2:]).is_file(), (name, path, digest)


def test_grid_expands_like_dvc_queue():
    points = expand_grid(["train.lr=0.001,0.002", "train.hidden=[256],[800]", "train.epochs=3"])
    assert sorted(map(tuple, points)) == sorted(
        (f"train.lr={lr}", f"train.hidden={hidden}", "train.epochs=3")
        for lr in ("0.001", "0.002") for hidden in ("[256]", "[800]"))
    assert expand_grid(["params.yaml:train.lr=1,2", "other.yaml:x=3"]) == [
        ["train.lr=1", "other.yaml:x=3"], ["train.lr=2", "other.yaml:x=3"]]
    with pytest.raises(PipelineError, match="-S"):
        expand_grid(["train.lr=[1,"])


@pytest.fixture(scope="module")
def local_sweep(servers):
    """The 2 x 2 grid on the embedded local cluster with two worker processes."""
    project = servers["project"]
    before = {path: path.read_bytes() for path in (project / "metrics").iterdir()}
    result = sweep(project, servers["env"], *GRID, "--workers", "2", "--name-prefix", "grid")
    return {**servers, "result": result, "before": before}


def test_sweep_on_the_local_cluster(local_sweep):
    project, env, result = local_sweep["project"], local_sweep["env"], local_sweep["result"]
    assert result.returncode == 0, result.stdout + result.stderr
    found = experiments(project, env, "grid")
    assert {experiment["params"] for experiment in found.values()} == COMBINATIONS
    # Refs on the git remote, outputs in the S3 store, one experiment per grid point.
    assert named(local_sweep["remote"], "grid") == sorted(found) == ["grid-1", "grid-2", "grid-3", "grid-4"]
    assert_outputs_in_store(local_sweep, found)
    # The embedded cluster listens on 127.0.0.1 only, with TLS.
    assert re.search(r"local cluster tls://127\.0\.0\.1:\d+ \(2 workers\)", result.stdout), result.stdout
    # Progress per experiment while it runs, then the summary table.
    for name in found:
        assert f"[{name}] started on" in result.stdout and f"[{name}] Running stage 'train'" in result.stdout
    table = result.stdout.split("\nexperiment ")[1]
    for name, experiment in found.items():
        assert re.search(rf"^{name}\s+done\s+[\d.]+\s+{experiment['accuracy']:.4g}\s", table, re.M), table


def test_workspace_untouched_and_apply_restores_without_rerunning(local_sweep):
    project, env = local_sweep["project"], local_sweep["env"]
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    assert {path: path.read_bytes() for path in (project / "metrics").iterdir()} == local_sweep["before"]
    found = experiments(project, env, "grid")
    name = next(name for name, experiment in found.items() if experiment["params"] == (0.003, (16,)))
    run(["dvc", "exp", "apply", name], project, env)
    try:
        assert json.loads((project / "metrics" / "eval.json").read_text())["accuracy"] == found[name]["accuracy"]
        # Every output matches the experiment's dvc.lock: nothing to rerun, nothing missing from the cache.
        assert "up to date" in run(["dvc", "status"], project, env).stdout
    finally:
        run(["git", "checkout", "--", "."], project)
        run(["dvc", "checkout", "--force"], project, env)


def test_credentials_stay_out_of_git_logs_and_params(local_sweep):
    project, env, result = local_sweep["project"], local_sweep["env"], local_sweep["result"]
    assert SECRET_KEY in (project / ".dvc" / "config.local").read_text()  # where the user keeps them
    assert SECRET_KEY not in result.stdout + result.stderr
    for name, experiment in experiments(project, env, "grid").items():
        assert SECRET_KEY not in experiment["json"], name
    git_dir = local_sweep["remote"]
    commits = run(["git", "for-each-ref", "--format=%(objectname)"], git_dir).stdout.split()
    grep = run(["git", "grep", "-I", "-l", SECRET_KEY, *commits], git_dir, check=False)
    assert grep.returncode == 1 and grep.stdout == "", grep.stdout
    assert SECRET_KEY not in run(["git", "log", "--all", "--format=%B"], git_dir).stdout


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A Dask scheduler and two workers over TLS with certificates signed by a test CA."""
    folder = tmp_path_factory.mktemp("tls")
    make_certificates(folder / "certs")
    address, processes = start_dask(folder, 2, folder / "certs")
    yield address, folder / "certs"
    for process in processes:
        stop(process)


@pytest.fixture(scope="module")
def tls_sweep(servers, tls_cluster):
    """Two grid points over TLS, one of them diverging."""
    address, certs = tls_cluster
    result = sweep(servers["project"], servers["env"], "-S", "train.lr=0.002,1e6", "--scheduler", address,
                   *tls_options(certs, "node"), "--name-prefix", "tls")
    return {**servers, "result": result, "cluster": certs.parent}


def test_sweep_over_tls(tls_sweep):
    project, env, result = tls_sweep["project"], tls_sweep["env"], tls_sweep["result"]
    assert "Dask scheduler tls://127.0.0.1:" in result.stdout and "(2 workers)" in result.stdout, result.stdout
    found = experiments(project, env, "tls")
    assert list(found) == ["tls-1"] and found["tls-1"]["params"] == (0.002, (32,))
    assert named(tls_sweep["remote"], "tls") == ["tls-1"]
    assert_outputs_in_store(tls_sweep, found)
    # Neither the sweep's output nor the scheduler's and workers' logs show the credentials.
    logs = [path.read_text() for path in tls_sweep["cluster"].glob("*.log")]
    assert len(logs) == 3
    assert SECRET_KEY not in result.stdout + result.stderr + "".join(logs)


def test_a_failing_grid_point_is_reported_by_name(tls_sweep):
    result = tls_sweep["result"]
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert re.search(r"1 of 2 grid points failed: tls-2 \(train\.lr=1000000\.0\): train: error: training diverged",
                     error), error
    assert re.search(r"^tls-1\s+done\s.*^tls-2\s+failed\s", result.stdout, re.M | re.S), result.stdout


@pytest.mark.parametrize("credentials", ["rogue", "none", "plain tcp"])
def test_client_without_the_right_certificate_is_refused(servers, tls_cluster, credentials):
    (address, certs), before = tls_cluster, store_files(servers)
    options = {"rogue": ["--scheduler", address, "--tls-ca-file", str(certs / "ca.pem"),
                         "--tls-cert", str(certs / "rogue.pem"), "--tls-key", str(certs / "rogue-key.pem")],
               "none": ["--scheduler", address],
               "plain tcp": ["--scheduler", address.replace("tls://", "tcp://")]}[credentials]
    result = sweep(servers["project"], servers["env"], "-S", "train.lr=0.002", *options, "--name-prefix", "refused")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot connect to the Dask scheduler at {options[1]}" in result.stderr, result.stderr
    assert store_files(servers) == before and named(servers["remote"], "refused") == []


@pytest.mark.parametrize("fault", ["scheduler", "store", "credentials", "git remote", "unpushed", "uncommitted"])
def test_what_fails_is_named_before_any_work(servers, fault):
    project, env, before = servers["project"], servers["env"], store_files(servers)
    closed = f"127.0.0.1:{free_port()}"
    change, undo = {
        "scheduler": ([], []),
        "store": (["dvc", "remote", "modify", "--local", "store", "endpointurl", f"http://{closed}"],
                  ["dvc", "remote", "modify", "--local", "--unset", "store", "endpointurl"]),
        "credentials": (["dvc", "remote", "modify", "--local", "store", "secret_access_key", "not-" + SECRET_KEY],
                        ["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET_KEY]),
        "git remote": (["git", "remote", "remove", "origin"], ["git", "remote", "add", "origin", str(servers["remote"])]),
        "unpushed": (["git", "commit", "-q", "--allow-empty", "-m", "not pushed"], ["git", "reset", "-q", "HEAD~1"]),
        "uncommitted": ([], ["git", "checkout", "--", "params.yaml"]),
    }[fault]
    if fault == "uncommitted":
        (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n")
    if change:
        run(change, project, env)
    try:
        result = sweep(project, env, "-S", "train.lr=0.002", "--scheduler", f"tcp://{closed}")
    finally:
        if undo:
            run(undo, project, env)
    assert result.returncode == 2 and "pushing" not in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [message] = [line for line in result.stderr.splitlines() if line.startswith("mnist-classification sweep: error:")]
    expected = {
        "scheduler": rf"cannot connect to the Dask scheduler at tcp://{closed}: .*fix --scheduler",
        "store": rf"cannot reach DVC remote 'store' \(s3://{BUCKET}/\S+ at http://{closed}\): .*endpointurl",
        "credentials": r"DVC remote 'store' .* refused the credentials .*dvc remote modify --local store",
        "git remote": r"no git remote: the workers clone the project from it; add one with `git remote add origin URL`",
        "unpushed": r"commit [0-9a-f]{7} is not on git remote 'origin' \(\S+remote\.git\), .*`git push origin HEAD`",
        "uncommitted": r"uncommitted changes \(params\.yaml\): the workers run the last commit",
    }[fault]
    assert re.search(expected, message), message
    assert SECRET_KEY not in message
    assert store_files(servers) == before


def test_worker_killed_mid_experiment(tmp_path, servers):
    """Kill the worker running kill-1 during its train stage: the task runs again on the other worker, and the
    sweep ends with exactly one experiment per grid point, every one complete."""
    project, env, remote = servers["project"], servers["env"], servers["remote"]
    address, processes = start_dask(tmp_path, 2)
    try:
        command = [sys.executable, "-m", "mnist_classification", "sweep", "-S", "train.lr=0.001,0.002",
                   "-S", "train.epochs=50", "-S", "train.patience=0", "--scheduler", address, "--name-prefix", "kill"]
        process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        lines, workers, victim = [], {}, None
        for line in process.stdout:
            lines.append(line)
            started = re.match(r"\[(kill-\d)\] started on w(\d)", line)
            if started:
                workers.setdefault(started.group(1), int(started.group(2)))
            if line.startswith("[kill-1] Running stage 'train'") and victim is None:
                assert "kill-1" in workers, "".join(lines)
                victim = processes[workers["kill-1"]]
                stop(victim)
                assert "kill-1" not in named(remote, "kill")  # nothing of the interrupted run is visible
        stderr = process.communicate(timeout=300)[1]
        output = "".join(lines)
        assert process.returncode == 0, output + stderr
        assert victim is not None and "[kill-1] restarted (its previous worker was lost)" in output, output
        found = experiments(project, env, "kill")
        assert named(remote, "kill") == sorted(found) == ["kill-1", "kill-2"]
        assert_outputs_in_store(servers, found)
    finally:
        for process in processes:
            stop(process)
