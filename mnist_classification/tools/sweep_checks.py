"""What a sweep needs before any work starts: the git remote, the DVC remote, the Dask scheduler.

Each check fails with one line naming what failed and what to set. Credentials never appear in a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from mnist_classification.infra.errors import PipelineError
from mnist_classification.tools.sweep_task import Secret

#: S3 error codes that mean "these credentials are not accepted".
REFUSED = re.compile(r"Forbidden|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|403")
#: Seconds to wait for the scheduler, and then for its first worker.
CONNECT_TIMEOUT = 10


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The user's repository and the commit every grid point starts from."""

    root: Path
    git_url: str                # as the workers reach it (a local path made absolute)
    shown_url: str              # for messages: without any user:password@
    commit: str
    identity: tuple[str, str]   # git user.name, user.email
    exp_refs: frozenset[str]    # experiment refs of ``commit``, local and on the git remote


def git(arguments: list[str], cwd: Path, check: bool = True) -> str:
    done = subprocess.run(["git", *arguments], check=False, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, arguments, done.stdout, done.stderr)
    return done.stdout.strip() if done.returncode == 0 else ""


def check_baseline(cwd: Path, remote: str) -> Baseline:
    """The clean, pushed commit of the repository around ``cwd`` and the git remote ``remote`` the workers clone."""
    root = git(["rev-parse", "--show-toplevel"], cwd, check=False)
    if not root or not (Path(root) / ".dvc").is_dir():
        raise PipelineError(f"{cwd} is not inside a git + DVC repository: run sweep in the project's clone")
    root = Path(root)
    remotes = git(["remote"], root).split()
    if remote not in remotes:
        if not remotes:
            raise PipelineError("no git remote: the workers clone the project from it; add one with "
                                "`git remote add origin URL` and `git push origin HEAD`")
        raise PipelineError(f"no git remote named {remote!r} (there are: {', '.join(remotes)}): use --git-remote")
    url = git(["remote", "get-url", remote], root)
    if "://" not in url and not re.match(r"^[\w.-]+@?[\w.-]*:", url):  # a local path, maybe relative
        url = str((root / url).resolve())
    shown = re.sub(r"//[^/@]*@", "//", url)
    changed = git(["diff", "--name-only", "HEAD"], root)
    if changed:
        files = ", ".join(changed.splitlines()[:5])
        raise PipelineError(f"uncommitted changes ({files}): the workers run the last commit from git remote "
                            f"{remote!r}; commit and push them first")
    commit = git(["rev-parse", "HEAD"], root)
    try:
        listed = git(["ls-remote", url], root)
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"cannot reach git remote {remote!r} ({shown}): {reason}; fix it with "
                            f"`git remote set-url {remote} URL`") from None
    refs = dict(line.split("\t")[::-1] for line in listed.splitlines())
    on_remote = any(subprocess.run(["git", "merge-base", "--is-ancestor", commit, sha], check=False, cwd=root,
                                   capture_output=True).returncode == 0 for sha in set(refs.values()))
    if not on_remote:
        raise PipelineError(f"commit {commit[:7]} is not on git remote {remote!r} ({shown}), where the workers "
                            f"clone it: `git push {remote} HEAD` first")
    prefix = f"refs/exps/{commit[:2]}/{commit[2:]}/"
    local = git(["for-each-ref", "--format=%(refname)", prefix], root).split()
    identity = (git(["config", "user.name"], root, check=False) or "mnist-sweep",
                git(["config", "user.email"], root, check=False) or "mnist-sweep@localhost")
    return Baseline(root, url, shown, commit, identity,
                    frozenset([*local, *(ref for ref in refs if ref.startswith(prefix))]))


def check_dvc_remote(root: Path) -> Secret:
    """Check the default DVC remote answers and accepts our credentials; return them for the workers."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise PipelineError("no default DVC remote: the workers take the baseline's data from it and push their "
                                "outputs to it; add one with `dvc remote add -d NAME s3://BUCKET/PATH`")
        secret = Secret(_config_local(repo, name))
        settings = repo.config["remote"][name]
        where = settings["url"] + (f" at {settings['endpointurl']}" if settings.get("endpointurl") else "")
        try:
            remote = repo.cloud.get_remote(name)
            remote.fs.exists(remote.path)
        except Exception as exc:  # noqa: BLE001 - each filesystem raises its own types; classified by message
            reason = secret.redact(str(exc) or type(exc).__name__)
            if isinstance(exc, PermissionError) or REFUSED.search(reason):
                keys = "access_key_id and secret_access_key" if settings["url"].startswith("s3://") else "its credentials"
                raise PipelineError(f"DVC remote {name!r} ({where}) refused the credentials ({reason}): set {keys} "
                                    f"with `dvc remote modify --local {name} KEY VALUE` (kept out of git)") from None
            raise PipelineError(f"cannot reach DVC remote {name!r} ({where}): {reason}; start it, or fix its address "
                                f"with `dvc remote modify {name} url|endpointurl VALUE`") from None
    return secret


def _config_local(repo, name: str) -> str:
    """The settings of remote ``name`` kept outside the repository's config (local, global, system levels),
    as the text of a .dvc/config.local file."""
    from configobj import ConfigObj

    settings = {}
    for level in ("system", "global", "local"):
        settings.update(repo.config.load_one(level).get("remote", {}).get(name, {}))
    if not settings:
        return ""
    config = ConfigObj()
    config[f'remote "{name}"'] = {key: str(value) for key, value in settings.items()}
    return "\n".join(config.write()) + "\n"


@contextlib.contextmanager
def connect(scheduler: str | None, workers: int | None, tls: dict[str, str], secret: Secret) -> Iterator:
    """A Dask client: of a local cluster on 127.0.0.1 (TLS with throw-away certificates), or of ``scheduler``."""
    from distributed import Client, LocalCluster
    from distributed.security import Security

    if scheduler is None:
        if tls:
            raise PipelineError("--tls-* options are for --scheduler tls://...; the local cluster makes its own")
        with LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, security=True,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    scheme = scheduler.split("://")[0] if "://" in scheduler else "tcp"
    if scheme not in ("tcp", "tls"):
        raise PipelineError(f"--scheduler {scheduler}: use tcp://HOST:PORT or tls://HOST:PORT")
    if tls and scheme != "tls":
        raise PipelineError(f"--tls-* options need a tls:// scheduler address, not {scheduler}")
    if scheme == "tcp" and secret.values:
        print("sweep: warning: tcp:// is not encrypted; the DVC remote's credentials travel in clear to the "
              "workers (use tls://, see the README)", file=sys.stderr, flush=True)
    security = Security(require_encryption=True, **tls) if tls else None
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its connection retries are not for the user
    try:
        client = Client(scheduler, security=security, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - OSError, SSLError, TimeoutError, CommClosedError, ...
        hint = ("check --tls-ca-file/--tls-cert/--tls-key against the scheduler's certificates"
                if scheme == "tls" else "start it with `dask scheduler`, or fix --scheduler")
        raise PipelineError(f"cannot connect to the Dask scheduler at {scheduler}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; {hint}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise PipelineError(f"the Dask scheduler at {scheduler} has no workers: start some with "
                                f"`dask worker {scheduler}`") from None
        yield client
