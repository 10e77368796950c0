"""``sweep``: run a grid of DVC experiments on a Dask cluster, shared through the git and DVC remotes.

The client (this module, in the user's repository) expands the ``-S`` grid exactly as ``dvc exp run
--queue`` does, checks the git remote, the DVC remote and the scheduler, pushes the baseline's outputs and
run-cache, and submits one task per grid point (:mod:`.sweep_task`). Each task clones the git remote at
the user's commit on its worker, runs ``dvc exp run`` and pushes the experiment. At the end the client
pulls every experiment (``dvc exp pull``) into the user's repository, whose workspace is never touched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

from mnist_classification.infra.errors import PipelineError
from mnist_classification.tools import sweep_task
from mnist_classification.tools.sweep_checks import Baseline, check_baseline, check_dvc_remote, connect
from mnist_classification.tools.sweep_task import DVC, PointResult, PointSpec, Secret, run_point

METRICS = ("accuracy", "val_accuracy", "loss")
PHASES = {"clone": "cloning", "run": "running dvc exp run", "push": "pushing"}
OUTCOMES = {"done": "pushed", "exists": "already pushed by an earlier attempt", "failed": "FAILED"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="[FILE:]KEY=VALUES",
                        help="as for `dvc exp run --queue`: a comma list is one axis of the grid (repeatable)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="an existing Dask scheduler (tcp://HOST:8786 or tls://HOST:8786); "
                             "default: a local cluster on 127.0.0.1")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes of the local cluster (default: the number of cores)")
    parser.add_argument("--name-prefix", metavar="P",
                        help="experiments are named P-1, P-2, ... (default: sweep-MMDD-HHMMSS)")
    parser.add_argument("--git-remote", default="origin", help="the git remote the workers clone (default: origin)")
    parser.add_argument("--tls-ca-file", metavar="PEM", help="the CA certificate that signed the cluster's certificates")
    parser.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="this client's private key")
    parser.add_argument("--metric", action="append", metavar="KEY",
                        help=f"metric shown in the summary (repeatable; default: {', '.join(METRICS)})")


def run(args: argparse.Namespace) -> None:
    grid = expand_grid(args.set_param)
    if args.workers is not None and (args.scheduler or args.workers < 1):
        raise PipelineError("--workers sizes the local cluster: a positive number, and only without --scheduler")
    prefix = args.name_prefix or time.strftime("sweep-%m%d-%H%M%S")
    baseline = check_baseline(Path.cwd(), args.git_remote)
    names = [f"{prefix}-{index}" for index in range(1, len(grid) + 1)]
    check_names_free(baseline, names)
    secret = check_dvc_remote(baseline.root)
    topic = f"mnist-sweep-{uuid.uuid4().hex[:12]}"
    specs = [PointSpec(name, tuple(overrides), baseline.git_url, baseline.commit, baseline.identity, secret, topic)
             for name, overrides in zip(names, grid)]
    say(f"sweep: {len(specs)} experiments of commit {baseline.commit[:7]} from git remote "
        f"'{args.git_remote}' ({baseline.shown_url})")
    with connect(args.scheduler, args.workers, tls_files(args), secret) as client:
        say(f"sweep: {'local cluster' if args.scheduler is None else 'Dask scheduler'} {client.scheduler.address} "
            f"({len(client.scheduler_info()['workers'])} workers)")
        push_baseline(baseline.root, secret)
        results = submit_and_wait(client, specs)
    pulled = [r.name for r in results.values() if r.status in ("done", "exists")]
    if pulled:
        say(f"sweep: pulling {len(pulled)} experiments into {baseline.root}")
        dvc(["exp", "pull", args.git_remote, *pulled], baseline.root, secret)
    print_summary(specs, results, experiment_metrics(baseline, pulled, secret), args.metric or METRICS)
    failed = [spec for spec in specs if results[spec.name].status == "failed"]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(specs)} grid points failed: " + "; ".join(
            f"{spec.name} ({' '.join(spec.overrides)}): {results[spec.name].error}" for spec in failed))


def expand_grid(set_params: list[str]) -> list[list[str]]:
    """The ``-S`` values as one list of overrides per grid point, expanded the way ``dvc exp run --queue`` does."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    if not set_params:
        raise PipelineError("no grid: give at least one -S KEY=VALUE[,VALUE...] (as for `dvc exp run --queue`)")
    try:
        sweeps = get_hydra_sweeps(to_path_overrides(set_params))
    except Exception as exc:  # Hydra's parser and DVC raise various types for a malformed override
        raise PipelineError(f"cannot parse the -S values {set_params}: {exc}") from None
    return [[override if path == "params.yaml" else f"{path}:{override}"
             for path, overrides in point.items() for override in overrides] for point in sweeps]


def check_names_free(baseline: Baseline, names: list[str]) -> None:
    """Refuse names that are not valid git ref names or already name an experiment of the baseline."""
    for name in names:
        if subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"], check=False).returncode != 0:
            raise PipelineError(f"experiment name {name!r} is not a valid git ref name: choose another --name-prefix")
    taken = sorted({ref.rsplit("/", 1)[-1] for ref in baseline.exp_refs} & set(names))
    if taken:
        raise PipelineError(f"experiments named {', '.join(taken)} already exist for commit {baseline.commit[:7]}: "
                            "choose another --name-prefix")


def tls_files(args: argparse.Namespace) -> dict[str, str]:
    files = {key: value for key, value in (("tls_ca_file", args.tls_ca_file), ("tls_client_cert", args.tls_cert),
                                            ("tls_client_key", args.tls_key)) if value}
    for path in files.values():
        if not Path(path).is_file():
            raise PipelineError(f"TLS file {path} does not exist")
    return files


def push_baseline(root: Path, secret: Secret) -> None:
    """Check the baseline's pipeline is reproduced, then push its outputs and run-cache to the DVC remote."""
    changed = json.loads(dvc(["status", "--json"], root, secret) or "{}")
    if changed:
        stages = ", ".join(sorted(changed))
        raise PipelineError(f"the pipeline of the current commit is not reproduced ({stages} changed): the workers "
                            "would recompute it; run `dvc repro`, commit dvc.lock and push, then sweep")
    say("sweep: pushing the baseline's outputs and run-cache to the DVC remote")
    dvc(["push", "--run-cache"], root, secret)


def dvc(arguments: list[str], root: Path, secret: Secret) -> str:
    """Run a DVC command in the user's repository; its errors become one PipelineError line, redacted."""
    done = subprocess.run([*DVC, *arguments], check=False, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        errors = sweep_task.error_lines(done.stdout + done.stderr) or f"exited {done.returncode}"
        raise PipelineError(secret.redact(f"`dvc {' '.join(arguments[:2])}` failed: {errors}"))
    return done.stdout


def submit_and_wait(client, specs: list[PointSpec]) -> dict[str, PointResult]:
    """Run every grid point, printing progress as it comes; return the result of each by name."""
    import cloudpickle
    from distributed import as_completed

    cloudpickle.register_pickle_by_value(sweep_task)  # the workers need not have this package installed
    overrides = {spec.name: " ".join(spec.overrides) for spec in specs}
    started: set[str] = set()

    def show(event) -> None:
        message = event[1]
        name, phase, worker, detail = message["name"], message["phase"], message["on"], message["detail"]
        if phase == "start":
            again = name in started
            started.add(name)
            say(f"[{name}] {'restarted (its previous worker was lost)' if again else 'started'} on {worker}: "
                f"{overrides[name]}")
        elif phase in PHASES:
            say(f"[{name}] {PHASES[phase]}")
        elif phase == "progress":
            say(f"[{name}] {detail}")

    client.subscribe_topic(specs[0].topic, show)
    futures = {client.submit(run_point, spec, key=f"{spec.name}-{spec.topic}", pure=False): spec for spec in specs}
    results = {}
    try:
        for future in as_completed(futures):
            spec = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the task never raises; this is Dask giving up (e.g. KilledWorker)
                result = PointResult(spec.name, "failed", "?", spec.config_local.redact(f"{type(exc).__name__}: {exc}"))
            results[spec.name] = result
            say(f"[{spec.name}] {OUTCOMES[result.status]} {timings(result.seconds)}"
                + (f": {result.error}" if result.error else ""))
    finally:
        client.unsubscribe_topic(specs[0].topic)
        client.cancel(list(futures))
    return results


def timings(seconds: dict[str, float]) -> str:
    """Like "in 14.2 s (clone 0.3 s, dvc exp run 9.8 s with 4.1 s in stages, push 4.0 s)", as far as it got."""
    parts = [f"clone {seconds['clone']:.1f} s"] if "clone" in seconds else []
    if "run" in seconds:
        parts.append(f"dvc exp run {seconds['run']:.1f} s with {seconds['stages']:.1f} s in stages")
    if "push" in seconds:
        parts.append(f"push {seconds['push']:.1f} s")
    return f"in {seconds.get('total', 0):.1f} s" + (f" ({', '.join(parts)})" if parts else "")


def experiment_metrics(baseline: Baseline, names: list[str], secret: Secret) -> dict[str, dict[str, float]]:
    """{experiment name: {metric key: value}} for ``names``, from ``dvc exp show`` in the user's repository."""
    if not names:
        return {}
    rows = json.loads(dvc(["exp", "show", "--json", "--no-fetch"], baseline.root, secret) or "[]")
    found = {}
    for row in rows:
        for experiment in row.get("experiments") or []:
            if experiment.get("name") in names:
                metrics = (experiment["revs"][0].get("data") or {}).get("metrics") or {}
                found[experiment["name"]] = {key: value for file in metrics.values()
                                             for key, value in (file.get("data") or {}).items()
                                             if isinstance(value, (int, float))}
    return found


def print_summary(specs, results, metrics, keys) -> None:
    """The table of every grid point, then the fixed cost per experiment and how to look at the results."""
    rows = [["experiment", "status", "seconds", *keys, "overrides"]]
    for spec in specs:
        result = results[spec.name]
        values = metrics.get(spec.name, {})
        rows.append([spec.name, result.status, f"{result.seconds.get('total', 0):.1f}",
                     *(f"{values[key]:.4g}" if key in values else "-" for key in keys), " ".join(spec.overrides)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    say("")
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    fixed = [r.seconds["total"] - r.seconds["stages"] for r in results.values() if "stages" in r.seconds]
    if fixed:
        say(f"\nfixed cost per experiment (clone, DVC start-up and pulls, push), median: "
            f"{statistics.median(fixed):.1f} s")
    done = [spec.name for spec in specs if results[spec.name].status != "failed"]
    if done:
        say(f"see them with `dvc exp show`; restore one with `dvc exp apply {done[0]}`")


_PRINT = threading.Lock()


def say(line: str) -> None:
    """Print one progress line at once (events arrive on Dask's thread)."""
    with _PRINT:
        print(line, flush=True)
