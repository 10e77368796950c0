"""Wall time of a ``sweep`` of short real-MNIST experiments on the embedded local cluster, with 1 and with 2
worker processes, and the fixed cost per experiment (clone, DVC start-up and pulls, push).

The set-up is the tests' (on 127.0.0.1: ``rclone serve s3`` as the DVC remote, a bare git remote), with a
clone of this repository's current commit whose outputs come from this repository's DVC cache:

    flock /work/timing.lock python bench/bench_sweep.py            # 8 experiments, 1 then 2 workers

Each experiment trains the MLP for one epoch (no early stopping) and evaluates it; the grid is
learning rate x hidden width (4 x 2).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sweep_helpers import ACCESS_KEY, BUCKET, SECRET_KEY, start_s3, stop  # noqa: E402

GRID = ["-S", "train.lr=0.0005,0.001,0.002,0.004", "-S", "train.hidden=[64],[128]",
        "-S", "train.epochs=1", "-S", "train.patience=0", "-S", "train.warmup_epochs=0"]


def sh(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def project(tmp: Path, endpoint: str) -> Path:
    """A clone of this repository's commit with its outputs (reproduced if dvc.lock is behind the code), an S3
    remote holding nothing yet, a bare git remote."""
    clone = tmp / "project"
    sh(["git", "clone", "-q", str(ROOT), str(clone)], tmp)
    dvc = [sys.executable, "-m", "dvc"]
    cache = sh([*dvc, "cache", "dir"], ROOT).strip()
    sh([*dvc, "remote", "add", "--local", "source", cache], clone)
    sh([*dvc, "pull", "-q", "-r", "source"], clone)
    sh([*dvc, "remote", "remove", "--local", "source"], clone)
    sh([*dvc, "repro", "-q"], clone)  # a stage whose code changed since dvc.lock was committed (none if current)
    sh([*dvc, "remote", "add", "-d", "store", f"s3://{BUCKET}/bench"], clone)
    sh([*dvc, "remote", "modify", "store", "endpointurl", endpoint], clone)
    sh([*dvc, "remote", "modify", "--local", "store", "access_key_id", ACCESS_KEY], clone)
    sh([*dvc, "remote", "modify", "--local", "store", "secret_access_key", SECRET_KEY], clone)
    sh(["git", "commit", "-qam", "DVC remote, pipeline reproduced"], clone)
    sh(["git", "init", "-q", "--bare", str(tmp / "remote.git")], tmp)
    sh(["git", "remote", "set-url", "origin", str(tmp / "remote.git")], clone)
    sh(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], clone)
    return clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated (default 1,2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        tmp = Path(folder)
        server, endpoint = start_s3(tmp / "s3", tmp / "rclone.log")
        try:
            clone = project(tmp, endpoint)
            for workers in map(int, args.workers.split(",")):
                start = time.monotonic()
                output = sh([sys.executable, "-m", "mnist_classification", "sweep", *GRID, "--workers", str(workers),
                             "--name-prefix", f"w{workers}"], clone)
                wall = time.monotonic() - start
                fixed = re.search(r"fixed cost per experiment .*median: ([\d.]+) s", output).group(1)
                each = [float(seconds) for seconds in re.findall(r"\] pushed in ([\d.]+) s", output)]
                print(f"{workers} worker(s): {len(each)} experiments in {wall:.1f} s wall; per experiment "
                      f"{min(each):.1f} - {max(each):.1f} s, of which fixed cost (median) {fixed} s")
                print("\n".join(line for line in output.splitlines() if "] pushed in" in line), flush=True)
        finally:
            stop(server)


if __name__ == "__main__":
    main()
