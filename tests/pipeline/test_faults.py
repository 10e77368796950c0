"""Hostile inputs and faults at the stage level: one clear message, a non-zero exit, nothing lost.

Covers what the unit tests of download, IDX, params and model files do not: each
stage run as a subprocess in a throw-away copy of the project (tests/pipeline_helpers)
with a bad params.yaml, corrupt inputs, a diverging learning rate, SIGTERM/SIGINT
mid-training and mid-download, a full disk (simulated, and a real tiny tmpfs where
mounting is allowed), and bad model files handed to the evaluate stage and to
``python -m mnist_classification predict``; plus every download failure without a
fallback mirror, hand-crafted zip archives as model files and a fuzz of IDX headers.
After every fault the previous outputs must be byte-identical (or absent where there
were none) and no temporary file may be left behind. Nothing here touches the internet.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mirror_server import BAD_MIRRORS, SPEC, TIMEOUT, server  # noqa: F401 (server is a fixture)
from model_files import add_pickled_payload, read_arrays
from pipeline_helpers import project_env, reproduced_project, run

from mnist_classification.data.datasets import FILE_NAMES
from mnist_classification.data.download import canonical_gzip, fetch_dataset
from mnist_classification.data.idx import encode_idx, parse_idx
from mnist_classification.infra import atomic
from mnist_classification.infra.errors import INTERRUPTED, PipelineError
from mnist_classification.infra.params import validate
from mnist_classification.nn.network import build_network, load_network

STAGES = ("fetch", "preprocess", "train", "evaluate")
OUTPUT_DIRS = ("data", "models", "plots", "metrics")
CLASSES = [str(d) for d in range(10)]


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A reproduced synthetic project (every output present), shared read-only by the tests."""
    project, mirror, _, _ = reproduced_project(tmp_path_factory.mktemp("faults"))
    return project, mirror


@pytest.fixture
def project(built, tmp_path):
    """A private copy of the reproduced project (git, DVC cache, outputs) and its environment."""
    base, mirror = built
    copy = tmp_path / "project"
    shutil.copytree(base, copy, symlinks=True)
    for path in copy.rglob("*"):  # DVC's hardlinked outputs are read-only; the copies are independent
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    return copy, project_env(copy, mirror)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (SHA-256, mtime_ns)} of every file under the output folders, plus dvc.lock."""
    files = [p for d in OUTPUT_DIRS for p in (root / d).rglob("*") if p.is_file()]
    files += [p for p in (root / "dvc.lock",) if p.exists()]
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in files}


def temp_files(root: Path) -> list[str]:
    """Temporary files of the atomic writers (``.<name>.<random>.tmp``) left anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp")
                  if ".git" not in p.parts and ".dvc" not in p.parts)


def set_params(root: Path, section: str, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(root: Path, env: dict, name: str) -> subprocess.CompletedProcess:
    return run(["python", f"stages/{name}.py"], root, env, check=False)


def assert_clean_error(result: subprocess.CompletedProcess, prefix: str, *fragments: str) -> str:
    """Exit 2, no traceback, the last stderr line starts with ``prefix`` and holds every fragment."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr
    for fragment in fragments:
        assert fragment in last, last
    return last


# --------------------------------------------------------------------------- bad params.yaml, every stage

def _unknown_key(text):
    return text.replace("  lr: 0.001\n", "  lrr: 0.001\n")


def _wrong_type(text):
    return text.replace("  epochs: 3\n", "  epochs: three\n")


def _out_of_range(text):
    return text.replace("  val_fraction: 0.1\n", "  val_fraction: 1.5\n")


def _malformed(text):
    return text.replace("  seed: 42\n", "  seed: [42\n")


# Each kind of mistake is tried on two stages and each stage sees two kinds (the whole file is
# validated by one function, unit-tested in tests/infra/test_params.py); fetch also runs in an empty folder.
BAD_PARAMS = {
    "unknown key": (_unknown_key, "unknown key train.lrr (did you mean 'lr'?)", ("fetch", "preprocess")),
    "wrong type": (_wrong_type, "train.epochs is 'three' (str); expected a whole number", ("preprocess", "train")),
    "out of range": (_out_of_range, "preprocess.val_fraction is 1.5; expected a number strictly between 0 and 1",
                     ("train", "evaluate")),
    "malformed yaml": (_malformed, "params.yaml is not valid YAML at line", ("evaluate", "fetch")),
}

assert sorted(name for *_, names in BAD_PARAMS.values() for name in names) == sorted(STAGES * 2)


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_stop_the_stages_before_any_work(project, case):
    root, env = project
    edit, message, stages = BAD_PARAMS[case]
    text = (root / "params.yaml").read_text()
    assert edit(text) != text, "the edit must change params.yaml"
    (root / "params.yaml").write_text(edit(text))
    # A stage with nothing to do yet must not even create its output folder: fetch runs in an
    # empty copy of the project too.
    empty = root.parent / "empty"
    empty.mkdir()
    shutil.copy(root / "params.yaml", empty / "params.yaml")
    before = snapshot(root)
    procs = {name: subprocess.Popen([sys.executable, str(root / "stages" / f"{name}.py")], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in stages}
    procs["fetch (empty dir)"] = subprocess.Popen([sys.executable, str(root / "stages" / "fetch.py")], cwd=empty,
                                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_clean_error(result, f"{name.split()[0]}: error: ", message)
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert snapshot(root) == before
    assert sorted(p.name for p in empty.iterdir()) == ["params.yaml"]


# --------------------------------------------------------------------------- downloads: nothing partial

@pytest.mark.parametrize("kind", sorted(BAD_MIRRORS))
def test_every_download_failure_leaves_no_partial_output(server, tmp_path, kind):  # noqa: F811
    """test_download checks each reason when falling back; here the mirror is the only one."""
    dest = tmp_path / "raw"
    bad = f"{server}/{kind}/"
    with pytest.raises(PipelineError) as info:
        fetch_dataset(SPEC, dest, None, mirrors=[bad], timeout=TIMEOUT, retries=0, progress=False)
    message = str(info.value)
    assert message.startswith(f"could not fetch {SPEC.files[0].gz_name} from any mirror:")
    reason = next(line for line in message.splitlines() if line.startswith(f"  - {bad}: "))
    assert BAD_MIRRORS[kind] in reason
    assert "Only complete, verified files are kept" in message and "DATASET_MIRROR=/path/to/mnist dvc repro" in message
    assert not dest.exists() or list(dest.iterdir()) == []


def test_fetch_stage_with_a_file_missing_from_the_mirror(built, tmp_path):
    base, mirror = built
    partial = tmp_path / "mirror"
    shutil.copytree(mirror, partial)
    (partial / f"{FILE_NAMES[2]}.gz").unlink()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(base / "params.yaml", work / "params.yaml")
    result = run(["python", str(base / "stages" / "fetch.py")], work, project_env(base, partial), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr[result.stderr.index("fetch: error: "):]
    assert error.startswith(f"fetch: error: could not fetch {FILE_NAMES[2]}.gz from any mirror:")
    assert f"missing file {partial / FILE_NAMES[2]}.gz" in error and "Only complete, verified files are kept" in error
    raw = work / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES[:2])


# --------------------------------------------------------------------------- corrupt inputs, every stage

def _zip_member_data(path: Path) -> int:
    """Offset of the first member's (compressed) data in a zip file."""
    header = path.read_bytes()[:30]
    assert header[:4] == b"PK\x03\x04"
    return 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _break_deflate(path: Path) -> None:
    """Make the first member's deflate stream start with the reserved block type (zlib.error, not a CRC error)."""
    data = bytearray(path.read_bytes())
    data[_zip_member_data(path)] = 0xFF
    path.write_bytes(bytes(data))


def _cut_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _labels_out_of_range(path: Path) -> None:
    labels = np.frombuffer(gzip.decompress(path.read_bytes())[8:], np.uint8).copy()
    labels[:3] = [10, 12, 255]
    path.write_bytes(gzip.compress(encode_idx(labels), mtime=0))


def _npy_instead_of_npz(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((3, 28, 28), np.uint8))


def _meta_without_mean(path: Path) -> None:
    meta = json.loads(path.read_text())
    del meta["mean"]
    path.write_text(json.dumps(meta))


def _meta_with_zero_std(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "std": 0}))


def _not_a_history(path: Path) -> None:
    path.write_text("epoch;loss\n1;0.5\n")


CORRUPT_INPUTS = {
    "truncated raw gzip": ("preprocess", "data/raw/train-labels-idx1-ubyte.gz", _cut_gzip,
                           "is a truncated gzip file"),
    "raw labels out of range": ("preprocess", "data/raw/t10k-labels-idx1-ubyte.gz", _labels_out_of_range,
                                "3 labels outside 0..9"),
    "broken deflate in prepared npz": ("train", "data/prepared/train.npz", _break_deflate,
                                       "is truncated or not a readable .npz archive"),
    "npy as prepared npz": ("train", "data/prepared/val.npz", _npy_instead_of_npz, "is not an .npz archive"),
    "meta without mean": ("train", "data/prepared/meta.json", _meta_without_mean,
                          "'mean' is None; expected a finite number"),
    "meta with zero std": ("train", "data/prepared/meta.json", _meta_with_zero_std,
                           "'std' is 0; expected a positive number"),
    "meta not json": ("train", "data/prepared/meta.json", _not_a_history, "cannot read"),
    "broken deflate in test npz": ("evaluate", "data/prepared/test.npz", _break_deflate,
                                   "is truncated or not a readable .npz archive"),
    "history not a history": ("evaluate", "plots/history.csv", _not_a_history, "is not a training history"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_INPUTS))
def test_corrupt_input_stops_the_stage_before_it_writes(project, case):
    root, env = project
    name, relpath, spoil, message = CORRUPT_INPUTS[case]
    spoil(root / relpath)
    before = snapshot(root)
    result = stage(root, env, name)
    line = assert_clean_error(result, f"{name}: error: ", relpath, message)
    assert result.stderr.strip() == line
    assert snapshot(root) == before
    assert temp_files(root) == []


# --------------------------------------------------------------------------- diverging training

def test_network_too_large_for_memory_is_refused_before_training(project):
    root, env = project
    before = snapshot(root)
    set_params(root, "train", hidden=[100_000_000])  # a 784 x 1e8 float32 weight matrix: 292 GiB
    result = stage(root, env, "train")
    line = assert_clean_error(result, "train: error: params.yaml: train.hidden is [100000000]: training would "
                              "need at least ", "TiB of memory", "choose a smaller train.hidden")
    assert result.stderr.strip() == line
    assert snapshot(root) == before
    assert temp_files(root) == []


def test_diverging_learning_rate_names_the_epoch_and_keeps_the_previous_model(project):
    root, env = project
    before = snapshot(root)
    set_params(root, "train", lr=1e6, optimizer="sgd", schedule="constant")
    result = stage(root, env, "train")
    line = assert_clean_error(result, "train: error: training diverged at epoch 1",
                              "Try a smaller learning rate than train.lr=1e+06", "train.lr=100000",
                              "no model was written")
    assert result.stderr.strip() == line  # no overflow warnings before it
    assert snapshot(root) == before
    assert temp_files(root) == []


def test_weights_overflowing_on_the_last_update_are_not_written(project):
    """One step per epoch: the loss of that step is finite, the update overflows the weights.

    Before the fix the stage wrote a model whose every output is NaN (and history.csv
    with val_loss nan); now the validation loss is checked too.
    """
    root, env = project
    before = snapshot(root)
    set_params(root, "train", lr=1e38, optimizer="sgd", schedule="constant", epochs=1, batch_size=1024,
               dropout=0.0)
    result = stage(root, env, "train")
    line = assert_clean_error(result, "train: error: training diverged at epoch 1: the validation loss became",
                              "smaller learning rate", "no model was written")
    assert result.stderr.strip() == line
    assert snapshot(root) == before
    assert temp_files(root) == []


def test_diverging_run_under_dvc_repro_fails_cleanly_and_the_cached_model_comes_back(project):
    """DVC itself deletes a stage's outputs before running it; the cached model is restorable."""
    root, env = project
    model = (root / "models/model.npz").read_bytes()
    lock = (root / "dvc.lock").read_bytes()
    set_params(root, "train", lr=1e6, optimizer="sgd", schedule="constant")
    result = run(["dvc", "repro"], root, env, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train: error: training diverged at epoch 1" in output and "Traceback" not in output
    assert "Running stage 'evaluate'" not in output
    assert (root / "dvc.lock").read_bytes() == lock
    assert not (root / "models/model.npz").exists() or (root / "models/model.npz").read_bytes() == model
    assert temp_files(root) == []
    run(["git", "checkout", "--", "params.yaml"], root)
    run(["dvc", "checkout", "models/model.npz"], root, env)
    assert (root / "models/model.npz").read_bytes() == model


# --------------------------------------------------------------------------- Ctrl-C / SIGTERM

def _skip_if_sigint_ignored(signum) -> None:
    """A shell without job control starts background jobs with SIGINT ignored; the stage inherits that."""
    if signum == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this session (a background job), so the stage would ignore it too")


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {text!r}:\n{path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {text!r} within {timeout} s:\n{path.read_text()}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_training_leaves_previous_outputs(project, signum):
    _skip_if_sigint_ignored(signum)
    root, env = project
    before = snapshot(root)
    params = (root / "params.yaml").read_bytes()
    set_params(root, "train", epochs=100_000, patience=0, schedule="constant")
    log = root.parent / "train.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "stages/train.py"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _wait_for(log, "epoch 3/100000", proc)  # mid-training: epochs are being run
            proc.send_signal(signum)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    message = log.read_text()
    assert proc.returncode == 130, message
    assert "Traceback" not in message
    assert message.rstrip().splitlines()[-1] == f"train: {INTERRUPTED}"
    assert snapshot(root) == before
    assert temp_files(root) == []
    if signum != signal.SIGTERM:
        return
    # the interrupted run changed nothing DVC tracks: with the old params the pipeline is up to date
    (root / "params.yaml").write_bytes(params)
    result = run(["dvc", "repro"], root, env)
    assert "Running stage" not in result.stdout
    assert snapshot(root) == before


class _SlowMirror(BaseHTTPRequestHandler):
    """Serves the first file completely; every other one stalls after a few bytes until released."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        state = self.server.state
        source = state["mirror"] / name
        if not source.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = source.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name == f"{FILE_NAMES[0]}.gz":
            self.wfile.write(body)
            return
        self.wfile.write(body[:100])
        self.wfile.flush()
        state["stalled"].set()
        state["release"].wait(30)


@contextlib.contextmanager
def slow_mirror(folder: Path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowMirror)
    httpd.daemon_threads = True
    httpd.state = {"mirror": folder, "stalled": threading.Event(), "release": threading.Event()}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/slow/", httpd.state
    finally:
        httpd.state["release"].set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_download_leaves_only_complete_files(built, tmp_path, signum):
    _skip_if_sigint_ignored(signum)
    base, mirror = built
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(base / "params.yaml", work / "params.yaml")
    raw = work / "data" / "raw"
    with slow_mirror(mirror) as (url, state):
        env = dict(project_env(base, None), DATASET_MIRROR=url)
        proc = subprocess.Popen([sys.executable, str(base / "stages" / "fetch.py")], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert state["stalled"].wait(60), "the fetch stage never reached the second file"
            time.sleep(0.2)  # let it block in the read of the body
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1] == f"fetch: {INTERRUPTED}"
    # only the file that was completely downloaded and verified, in canonical form; nothing partial
    assert sorted(p.name for p in raw.iterdir()) == [f"{FILE_NAMES[0]}.gz"]
    payload = gzip.decompress((mirror / f"{FILE_NAMES[0]}.gz").read_bytes())
    assert (raw / f"{FILE_NAMES[0]}.gz").read_bytes() == canonical_gzip(payload)
    # the next run completes from a working mirror
    result = run(["python", str(base / "stages" / "fetch.py")], work, project_env(base, mirror))
    assert "already present and verified" in result.stderr
    assert sorted(p.name for p in raw.iterdir()) == sorted([f"{n}.gz" for n in FILE_NAMES] + ["dataset.json"])


# --------------------------------------------------------------------------- disk full

def _network(hidden=8):
    train = validate({"train": {"hidden": [hidden]}})["train"]
    return build_network(train, (28, 28), CLASSES, 0.13, 0.31)


def _plot(path):
    from mnist_classification.reports.plotting import plot_confusion_matrix

    plot_confusion_matrix(np.eye(10, dtype=np.int64) * 7, CLASSES, path)


WRITERS = {
    "write_json": ("metrics.json", lambda path: atomic.write_json(path, {"accuracy": 0.5, "values": list(range(50))})),
    "write_csv": ("history.csv", lambda path: atomic.write_csv(path, ("a", "b"), ((i, i * i) for i in range(100)))),
    "save_npz": ("arrays.npz", lambda path: atomic.save_npz(path, {"x": np.arange(1000, dtype=np.float32)})),
    "Network.save": ("model.npz", lambda path: _network().save(path)),
    "png": ("confusion.png", _plot),
}


class _FullDisk:
    """A file object that accepts ``budget`` bytes, then fails like a full disk."""

    def __init__(self, handle, budget: int):
        self._handle, self._budget = handle, budget

    def write(self, data):
        if len(data) > self._budget:
            self._handle.write(bytes(data[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", ["write", "fsync"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch, writer, failure):
    name, write = WRITERS[writer]
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / name
    previous = b"previous complete version\n"
    path.write_bytes(previous)
    if failure == "write":  # the disk fills up part way through the data
        real_fdopen = os.fdopen
        monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), 64))
    else:  # the data fit in the page cache; flushing them to disk fails
        monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(PipelineError) as info:
        write(path)
    message = str(info.value)
    assert message == f"cannot write {path}: No space left on device; nothing was written"
    assert path.read_bytes() == previous
    assert sorted(p.name for p in folder.iterdir()) == [name]
    monkeypatch.undo()
    write(path)  # with space again the same write succeeds
    assert path.read_bytes() != previous and sorted(p.name for p in folder.iterdir()) == [name]


def test_interrupt_during_a_write_removes_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(b"previous")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _network().save(path)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, PipelineError])
def test_all_or_nothing_keeps_every_previous_file_when_one_write_fails(tmp_path, failure):
    paths = [tmp_path / "a.json", tmp_path / "sub" / "b.csv"]
    paths[0].write_text("old a")
    with pytest.raises(failure):
        with atomic.all_or_nothing():
            atomic.write_json(paths[0], {"new": 1})
            atomic.write_csv(paths[1], ("x",), [(1,)])
            assert paths[0].read_text() == "old a" and not paths[1].exists()  # nothing renamed yet
            raise failure("the third output could not be made")
    assert paths[0].read_text() == "old a" and not paths[1].exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.json"]  # no temporary files


def test_all_or_nothing_writes_everything_at_the_end(tmp_path):
    with atomic.all_or_nothing():
        atomic.write_text(tmp_path / "a.txt", "A")
        atomic.write_text(tmp_path / "b.txt", "B")
    assert (tmp_path / "a.txt").read_text() == "A" and (tmp_path / "b.txt").read_text() == "B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    atomic.write_text(tmp_path / "a.txt", "A2")  # outside a block, writes land at once again
    assert (tmp_path / "a.txt").read_text() == "A2"
    with pytest.raises(RuntimeError, match="do not nest"):
        with atomic.all_or_nothing(), atomic.all_or_nothing():
            pass


def test_evaluate_failing_on_its_last_plot_changes_no_output(project):
    """The gallery of misclassified images is the evaluate stage's last output."""
    root, env = project
    plots = "dvclive/evaluate/plots"
    outputs = ["metrics/eval.json", f"{plots}/sklearn/confusion_matrix.json", f"{plots}/images/loss_curve.png",
               f"{plots}/images/accuracy_plot.png", f"{plots}/images/confusion_matrix.png"]
    for name in outputs:  # stand-ins that a real evaluate run would replace
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"previous {name}\n")
    before = snapshot(root)
    sitecustomize = root.parent / "failing_gallery"
    sitecustomize.mkdir(exist_ok=True)
    (sitecustomize / "sitecustomize.py").write_text(
        "import mnist_classification.reports.plotting as plotting\n"
        "from mnist_classification.infra.errors import PipelineError\n"
        "def fail(*args, **kwargs):\n"
        "    raise PipelineError('cannot draw the gallery (injected failure)')\n"
        "plotting.plot_misclassified = fail\n")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(sitecustomize), env.get("PYTHONPATH", "")])}
    result = stage(root, env, "evaluate")
    assert_clean_error(result, "evaluate: error: cannot draw the gallery (injected failure)")
    assert snapshot(root) == before
    assert temp_files(root) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 16 KiB tmpfs; skipped where mounting is not permitted (not root, containers)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to create a tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)


@pytest.mark.parametrize("writer", ["Network.save", "png"])
def test_real_full_disk(tiny_tmpfs, writer):
    name, _ = WRITERS[writer]
    path = tiny_tmpfs / name
    path.write_bytes(b"previous")
    with pytest.raises(PipelineError) as info:
        if writer == "png":
            _plot(path)
        else:
            _network(hidden=64).save(path)  # ~200 kB of weights on a 16 KiB file system
    assert str(info.value) == f"cannot write {path}: No space left on device; nothing was written"
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tiny_tmpfs.iterdir()] == [name]
    usage = shutil.disk_usage(tiny_tmpfs)
    assert usage.used <= 4096  # the temporary file's blocks were freed


# --------------------------------------------------------------------------- bad model files at the CLI

def _truncate(path, marker):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tamper(path, marker):
    arrays = read_arrays(path)
    key = next(k for k in sorted(arrays) if k.endswith(".W"))
    arrays[key][0, 0] += 1  # the recorded checksum is left as it was
    atomic.save_npz(path, arrays)


def _wrong_architecture(path, marker):
    arrays = read_arrays(path)
    header = json.loads(str(arrays["architecture"]))
    dense = next(layer for layer in header["layers"] if layer["type"] == "dense")
    dense["out_features"] += 1
    arrays["architecture"] = np.array(json.dumps(header))
    atomic.save_npz(path, arrays)



def _overflow(path, marker):
    """Finite weights with a valid checksum whose outputs overflow to NaN."""
    network = _network()
    rng = np.random.default_rng(0)
    for layer in network.layers:
        if "W" in layer.params:
            layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape) * 1e30
    network.save(path)


def _html(path, marker):
    path.write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>")


def _compressed_broken(path, marker):
    """A compressed .npz (np.savez_compressed loads fine) whose deflate stream is damaged."""
    arrays = read_arrays(path)
    path.unlink()
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    _break_deflate(path)


_UNREADABLE = "is truncated or not a readable .npz archive"
BAD_MODELS = {
    "truncated": (_truncate, _UNREADABLE),
    "html page": (_html, "is not an .npz archive (not a zip file)"),
    "broken deflate": (_compressed_broken, "is truncated or not a readable .npz archive (1.W.npy: Error -3"),
    "tampered": (_tamper, "do not match the checksum recorded at training"),
    "wrong architecture": (_wrong_architecture, "the layer needs"),
    "pickled": (add_pickled_payload, "is refused: it holds pickled objects"),
    "overflowing": (_overflow, "NaN or infinite"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_evaluate_stage_refuses_a_bad_model(project, kind):
    root, env = project
    spoil, message = BAD_MODELS[kind]
    marker = root.parent / "pickle-executed"
    spoil(root / "models/model.npz", marker)
    before = snapshot(root)
    result = stage(root, env, "evaluate")
    line = assert_clean_error(result, "evaluate: error: ", "models/model.npz", message)
    assert result.stderr.strip() == line  # one line, no warnings
    assert snapshot(root) == before  # metrics/eval.json and every plot untouched
    assert temp_files(root) == []
    assert not marker.exists()


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_predict_cli_refuses_a_bad_model(built, tmp_path, kind):
    from mnist_classification.tools.predict import encode_png

    base, _ = built
    spoil, message = BAD_MODELS[kind]
    model = tmp_path / "bad.npz"
    shutil.copyfile(base / "models/model.npz", model)
    marker = tmp_path / "pickle-executed"
    spoil(model, marker)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    (tmp_path / "digit.png").write_bytes(encode_png(digit))
    np.save(tmp_path / "batch.npy", np.stack([digit, digit]))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(["python", "-m", "mnist_classification", "predict", "digit.png", "batch.npy", "--model", str(model),
                  "--show", "--output", "preds.csv"], tmp_path, project_env(base, None), check=False)
    line = assert_clean_error(result, "mnist-classification predict: error: ", str(model), message)
    assert result.stderr.strip() == line and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no preview PNG, no CSV, no temp file
    assert not marker.exists()


def _patch_zip_field(data: bytes, local_offset: int, central_offset: int, value: int) -> bytes:
    """Set a 2-byte field in every local header and central directory entry of a zip archive."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = 0
        while (start := out.find(signature, start)) != -1:
            out[start + offset:start + offset + 2] = value.to_bytes(2, "little")
            start += 4
    return bytes(out)


HAND_CRAFTED_MODELS = {
    # what each did before the fix: a traceback (TypeError, NotImplementedError, LZMAError, RuntimeError)
    # or a misleading "holds pickled objects"
    "bare .npy": (lambda data: _npy_bytes(), "is not an .npz archive (not a zip file)"),
    "text file": (lambda data: b"weights: 1 2 3\n", "is not an .npz archive (not a zip file)"),
    "empty file": (lambda data: b"", "is not an .npz archive (not a zip file)"),
    "unknown compression": (lambda data: _patch_zip_field(data, 8, 10, 99), "compression method 99 is not supported"),
    "lzma with bad options": (lambda data: _patch_zip_field(data, 8, 10, 14), _UNREADABLE),
    "bzip2 that is not": (lambda data: _patch_zip_field(data, 8, 10, 12), _UNREADABLE),
    "encrypted": (lambda data: _patch_zip_field(data, 6, 8, 1), "is encrypted"),
}


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", sorted(HAND_CRAFTED_MODELS))
def test_hand_crafted_model_archives_are_refused(tmp_path, kind):
    make, message = HAND_CRAFTED_MODELS[kind]
    path = tmp_path / "model.npz"
    _network().save(path)
    path.write_bytes(make(path.read_bytes()))
    with pytest.raises(PipelineError) as info:
        load_network(path)
    assert str(info.value).startswith(f"model file {path} ") and message in str(info.value)


# --------------------------------------------------------------------------- IDX: structured fuzz

# Headers that get past the magic number (random bytes almost never do): the right or a wrong
# type code, any rank, dimensions small or huge, and a payload near the declared size.
_DIMS = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1))


@settings(max_examples=1000, deadline=None)
@given(code=st.one_of(st.just(0x08), st.integers(0, 255)), dims=st.lists(_DIMS, max_size=4),
       delta=st.integers(-3, 3), extra=st.booleans())
def test_fuzz_idx_headers(code, dims, delta, extra):
    expected = 1
    for d in dims:
        expected *= d
    size = max(0, min(expected, 300) + delta)
    data = bytes((0, 0, code, len(dims))) + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(size)
    if extra and dims:
        data = data[:-1]  # a header cut inside the dimensions when the payload is empty
    try:
        out = parse_idx(data, "fuzz.idx")
    except PipelineError as exc:
        assert str(exc).startswith("fuzz.idx: ")
        return
    assert code == 0x08 and len(dims) in (1, 3) and out.shape == tuple(dims) and out.dtype == np.uint8
    assert out.size == len(data) - 4 - 4 * len(dims)


def test_empty_idx_with_impossible_dimensions():
    """Found by the fuzz above: 0 x 3e9 x 3e9 declares no data, but reshape raised ValueError (a traceback)."""
    data = bytes((0, 0, 8, 3)) + b"".join(d.to_bytes(4, "big") for d in (0, 3_036_988_439, 3_037_012_561))
    with pytest.raises(PipelineError, match=r"fuzz\.idx: IDX header declares dimensions 0x3036988439x3037012561"):
        parse_idx(data, "fuzz.idx")
