"""One grid point of a sweep, run on a Dask worker: clone, ``dvc exp run``, push, clean up.

The client sends this module's code to the workers by value (cloudpickle), so a worker needs git, DVC
and the project's runtime dependencies, not this package: the stages import the package from the clone.
The task never raises: every outcome comes back as a :class:`PointResult`, so a failing grid point never
makes Dask log the task's arguments (which hold the DVC remote's credentials).

Exactly one experiment per grid point, never a half-pushed one: the outputs go to the DVC remote before
the experiment's git ref (one ref, pushed atomically by git, without force), and a task that finds the ref
already on the git remote (an earlier attempt whose worker died after pushing) stops there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

#: Lines of ``dvc exp run`` output worth showing as progress.
PROGRESS = re.compile(r"^(Running stage '[^']+'|Stage '[^']+' didn't change|epoch \d+/\d+)")
#: Lines that say what went wrong (DVC's own, and the stages' one-line errors).
ERROR_LINE = re.compile(r"^ERROR: |: error: |Error: ")
#: DVC as installed next to the worker's Python.
DVC = [sys.executable, "-m", "dvc"]
#: `dvc push --run-cache`, then `dvc exp push --no-cache origin NAME`, in one process: the outputs reach the
#: DVC remote before the experiment's git ref reaches the git remote. Exit status 3: the ref was not pushed
#: (another one of that name is there).
PUSH = """import sys
from dvc.repo import Repo
with Repo() as repo:
    repo.push(run_cache=True)
    pushed = repo.experiments.push("origin", [sys.argv[1]], push_cache=False)
sys.exit(0 if sys.argv[1] in pushed.get("success", []) + pushed.get("up_to_date", []) else 3)
"""


#: DVC remote config keys whose values are secrets (S3, GCS, Azure, SSH, HTTP, WebDAV, ... credentials).
SECRET_KEY = re.compile(r"key|secret|token|password|credential|connection_string|sas", re.IGNORECASE)


class StepFailed(RuntimeError):
    """A command of the task failed; the message says which and why."""


class Secret:
    """A DVC remote's credentials as .dvc/config.local text; never shown by repr (Dask logs task arguments)."""

    def __init__(self, text: str) -> None:
        self.text = text
        pairs = (line.partition("=") for line in text.splitlines())
        self.values = [value.strip().strip("'\"") for key, sep, value in pairs
                       if sep and SECRET_KEY.search(key) and value.strip()]

    def __repr__(self) -> str:
        return "Secret(***)"

    def redact(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for value in self.values:
            text = text.replace(value, "***")
        return text


@dataclasses.dataclass(frozen=True)
class PointSpec:
    """Everything a worker needs for one grid point (sent to the worker, so no secrets but ``config_local``)."""

    name: str                   # experiment name, unique for the baseline
    overrides: tuple[str, ...]  # ``-S`` values of this grid point
    git_url: str                # the project's git remote as the workers reach it
    commit: str                 # the baseline commit (40 hex digits)
    identity: tuple[str, str]   # git user.name and user.email for the experiment commit
    config_local: Secret        # the DVC remote's credentials as a .dvc/config.local file ("" when none)
    topic: str                  # Dask event topic for progress

    @property
    def ref(self) -> str:
        return f"refs/exps/{self.commit[:2]}/{self.commit[2:]}/{self.name}"


@dataclasses.dataclass
class PointResult:
    """What became of one grid point; times in seconds."""

    name: str
    status: str                 # "done", "exists" (pushed by an earlier attempt) or "failed"
    worker: str
    error: str = ""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def run_point(spec: PointSpec) -> PointResult:
    """Run one grid point on this worker and push it; report progress as Dask events on ``spec.topic``."""
    from distributed import get_worker

    worker = get_worker()
    where = worker.name if isinstance(worker.name, str) else worker.address

    def emit(phase: str, detail: str = "") -> None:  # (the scheduler adds the worker's address as "worker")
        worker.log_event(spec.topic, {"name": spec.name, "phase": phase, "on": where, "detail": detail})

    start = time.monotonic()
    result = PointResult(spec.name, "failed", where)
    emit("start")
    workdir = tempfile.mkdtemp(prefix=f"mnist-sweep-{spec.name}-")
    try:
        _run(spec, os.path.join(workdir, "repo"), emit, result)
    except Exception as exc:  # noqa: BLE001 - reported by name to the client, never raised into Dask
        message = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
        result.status, result.error = "failed", spec.config_local.redact(message)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds["total"] = time.monotonic() - start
    emit(result.status, result.error)
    return result


def _run(spec: PointSpec, repo: str, emit: Callable[..., None], result: PointResult) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
               GIT_TERMINAL_PROMPT="0")
    if _remote_has_ref(spec, env):
        result.status = "exists"
        return
    clock = time.monotonic()
    emit("clone")
    _check(["git", "clone", "--quiet", "--no-checkout", spec.git_url, repo], None, env)
    _check(["git", "checkout", "--quiet", "--detach", spec.commit], repo, env)
    _check(["git", "config", "user.name", spec.identity[0]], repo, env)
    _check(["git", "config", "user.email", spec.identity[1]], repo, env)
    if spec.config_local.text:
        path = os.path.join(repo, ".dvc", "config.local")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(spec.config_local.text)
    result.seconds["clone"] = time.monotonic() - clock

    clock = time.monotonic()
    emit("run")
    command = [*DVC, "exp", "run", "--pull", "--allow-missing", "-n", spec.name]
    for override in spec.overrides:
        command += ["-S", override]
    stages = _stream(spec, command, repo, env, emit)
    result.seconds["run"], result.seconds["stages"] = time.monotonic() - clock, stages

    clock = time.monotonic()
    emit("push")
    pushed = subprocess.run([sys.executable, "-c", PUSH, spec.name], check=False, cwd=repo, env=env,
                            capture_output=True, text=True)
    result.seconds["push"] = time.monotonic() - clock
    if pushed.returncode == 0:
        result.status = "done"
    elif _remote_has_ref(spec, env):  # another attempt of this grid point pushed first
        result.status = "exists"
    else:
        raise StepFailed("pushing failed: " + (error_lines(pushed.stdout + pushed.stderr)
                                               or "".join(pushed.stderr.strip().splitlines()[-1:])))


def _stream(spec: PointSpec, command: list[str], repo: str, env: dict, emit: Callable[..., None]) -> float:
    """Run ``dvc exp run``, emitting progress lines; return the seconds from its first stage's start to its end."""
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    lines, first_stage, stages_end = [], None, time.monotonic()
    for line in process.stdout:
        line = line.rstrip()
        lines.append(line)
        if line.startswith("Running stage"):
            first_stage = first_stage or time.monotonic()
        if line.startswith(("Ran experiment", "ERROR")) and first_stage is not None:
            stages_end = time.monotonic()
        if PROGRESS.match(line):
            emit("progress", spec.config_local.redact(line))
    if process.wait() != 0:
        raise StepFailed(error_lines("\n".join(lines)) or f"dvc exp run exited {process.returncode}")
    return stages_end - first_stage if first_stage is not None else 0.0


def _remote_has_ref(spec: PointSpec, env: dict) -> bool:
    listed = _check(["git", "ls-remote", spec.git_url, spec.ref], None, env)
    return bool(listed.strip())


def _check(command: list[str], cwd: str | None, env: dict) -> str:
    """Run ``command``; its output, or StepFailed naming the command and its error lines."""
    done = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        message = error_lines(done.stderr + done.stdout) or "".join(done.stderr.strip().splitlines()[-1:])
        shown = ["dvc", *command[len(DVC):]] if command[:len(DVC)] == DVC else command
        raise StepFailed(f"`{' '.join(shown[:3])}` exited {done.returncode}: {message or 'no output'}")
    return done.stdout


def error_lines(output: str) -> str:
    """The lines of ``output`` that say what failed, joined into one line."""
    found = [line.strip() for line in output.splitlines() if ERROR_LINE.search(line)]
    return " / ".join(dict.fromkeys(found))
