"""Mirror fallback, verification and atomic output of the fetch code, against a misbehaving local server.

Nothing here touches the internet: every mirror is 127.0.0.1 or a temporary folder.
"""

import gzip
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirror_server import BAD_MIRRORS, PAYLOADS, SPEC, TIMEOUT, server  # noqa: F401 (server is a fixture)

from mnist_classification.data.datasets import FILE_NAMES, MNIST
from mnist_classification.data.download import canonical_gzip, fetch_dataset, fetch_file
from mnist_classification.data.idx import gunzip
from mnist_classification.infra.errors import PipelineError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
@pytest.fixture
def good_dir(tmp_path):
    """A local mirror folder whose gzip wrappers differ from the canonical ones (level 9, file name, mtime)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name, payload in PAYLOADS.items():
        with open(folder / f"{name}.gz", "wb") as raw, \
                gzip.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=9, mtime=123456) as gz:
            gz.write(payload)
    return folder


def _fetch(dest, mirrors, mirror_env=None, **kwargs):
    kwargs.setdefault("timeout", TIMEOUT)
    kwargs.setdefault("retries", 0)
    return fetch_dataset(SPEC, dest, mirror_env, mirrors=mirrors, progress=False, **kwargs)


def _assert_complete(dest):
    for name, payload in PAYLOADS.items():
        data = (dest / f"{name}.gz").read_bytes()
        assert gunzip(data, name) == payload
        assert data == canonical_gzip(payload)
    assert '"name": "tiny"' in (dest / "dataset.json").read_text()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")], "temporary files left behind"




@pytest.mark.parametrize("kind", sorted(BAD_MIRRORS))
def test_falls_back_to_next_mirror(server, good_dir, tmp_path, kind):
    bad = f"{server}/{kind}/"
    stream = io.StringIO()
    payload, used = fetch_file(SPEC.files[1], [bad, str(good_dir)], timeout=TIMEOUT, retries=0, stream=stream)
    assert payload == PAYLOADS[FILE_NAMES[1]] and used == str(good_dir)
    assert BAD_MIRRORS[kind] in stream.getvalue() and bad in stream.getvalue()
    if kind in ("notfound", "wrong", "html"):  # whole dataset, once per kind of failure
        _fetch(tmp_path / "raw", [bad, str(good_dir)])
        _assert_complete(tmp_path / "raw")


def test_all_mirrors_fail_message_and_no_partial_file(server, tmp_path):
    dest = tmp_path / "raw"
    mirrors = [f"{server}/notfound/", f"{server}/short/", f"{server}/wrong/"]
    with pytest.raises(PipelineError) as info:
        _fetch(dest, mirrors, mirror_env=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert f"{tmp_path / 'nowhere'}: folder {tmp_path / 'nowhere'} does not exist" in message
    assert f"{server}/notfound/: HTTP 404" in message
    assert f"{server}/short/: truncated body" in message
    assert f"{server}/wrong/: checksum mismatch" in message
    assert "DATASET_MIRROR=/path/to/mnist dvc repro" in message
    assert not dest.exists() or list(dest.iterdir()) == []


def test_failure_midway_keeps_only_complete_verified_files(server, good_dir, tmp_path):
    (good_dir / f"{FILE_NAMES[2]}.gz").unlink()
    dest = tmp_path / "raw"
    with pytest.raises(PipelineError, match=rf"{FILE_NAMES[2]}\.gz.*\n.*missing file"):
        _fetch(dest, [str(good_dir), f"{server}/short/"])
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES[:2])
    for name in FILE_NAMES[:2]:
        assert (dest / f"{name}.gz").read_bytes() == canonical_gzip(PAYLOADS[name])


def test_transient_failure_is_retried(server, tmp_path):
    dest = tmp_path / "raw"
    _fetch(dest, [f"{server}/flaky/"], retries=1)
    _assert_complete(dest)


def test_retries_zero_gives_up(server, tmp_path):
    fspec = SPEC.files[3]
    with pytest.raises(PipelineError, match="HTTP 500"):
        fetch_file(fspec, [f"{server}/error/"], timeout=TIMEOUT, retries=0)
    with pytest.raises(PipelineError, match=r"HTTP 500 Internal Server Error \(tried 2 times\)"):
        fetch_file(fspec, [f"{server}/error/"], timeout=TIMEOUT, retries=1)


def test_body_without_content_length(server, tmp_path):
    _fetch(tmp_path / "out", [f"{server}/nolength/"])
    _assert_complete(tmp_path / "out")


def test_bounded_redirect_is_followed(server, tmp_path):
    _fetch(tmp_path / "raw", [f"{server}/redirect/"])
    _assert_complete(tmp_path / "raw")


def test_output_is_identical_whichever_mirror_served_it(server, good_dir, tmp_path):
    _fetch(tmp_path / "a", [f"{server}/good/"])
    _fetch(tmp_path / "b", [str(good_dir)])
    for name in [f"{n}.gz" for n in FILE_NAMES] + ["dataset.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    header = (tmp_path / "a" / f"{FILE_NAMES[0]}.gz").read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == bytes(4)  # no file name, mtime 0


def test_dataset_mirror_env_is_tried_first(server, good_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DATASET_MIRROR", str(good_dir))
    fetch_dataset(SPEC, tmp_path / "raw", mirrors=[f"{server}/notfound/"], progress=False)
    _assert_complete(tmp_path / "raw")
    # an http URL prefix without a trailing slash works too
    _fetch(tmp_path / "raw2", [], mirror_env=f"{server}/good")
    _assert_complete(tmp_path / "raw2")


@pytest.mark.parametrize("value", ["ftp://example.org/mnist/", "file:///data/mnist", "s3://bucket/mnist"])
def test_unsupported_scheme_is_rejected(tmp_path, value):
    with pytest.raises(PipelineError, match=r"DATASET_MIRROR.*only http://, https://.*local folder"):
        _fetch(tmp_path / "raw", [], mirror_env=value)
    assert not (tmp_path / "raw").exists()


def test_missing_and_unreadable_files_in_mirror_folder(good_dir, tmp_path):
    fspec = SPEC.files[0]
    (good_dir / fspec.gz_name).unlink()
    with pytest.raises(PipelineError, match=rf"missing file {good_dir / fspec.gz_name}"):
        fetch_file(fspec, [str(good_dir)])
    (good_dir / fspec.gz_name).mkdir()  # a folder where the file should be: unreadable as a file
    with pytest.raises(PipelineError, match=rf"cannot read {good_dir / fspec.gz_name}"):
        fetch_file(fspec, [str(good_dir)])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_permission_denied_file_in_mirror_folder(good_dir):
    fspec = SPEC.files[1]
    (good_dir / fspec.gz_name).chmod(0)
    with pytest.raises(PipelineError, match="cannot read.*Permission denied"):
        fetch_file(fspec, [str(good_dir)])


def test_uncompressed_file_in_mirror_folder_is_accepted(good_dir, tmp_path):
    for name, payload in PAYLOADS.items():
        (good_dir / f"{name}.gz").unlink()
        (good_dir / name).write_bytes(payload)
    _fetch(tmp_path / "raw", [str(good_dir)])
    _assert_complete(tmp_path / "raw")


def test_download_size_limit(server, tmp_path):
    with pytest.raises(PipelineError, match=r"file is [0-9.]+ kB, more than the 10 bytes limit"):
        fetch_file(SPEC.files[0], [f"{server}/good/"], timeout=TIMEOUT, max_download_bytes=10)


def test_verified_files_are_reused_and_canonicalised(server, good_dir, tmp_path):
    dest = tmp_path / "raw"
    _fetch(dest, [str(good_dir)])
    # a verified but non-canonical wrapper is rewritten; a corrupt one is fetched again
    name0, name1 = (f"{n}.gz" for n in FILE_NAMES[:2])
    (dest / name0).write_bytes((good_dir / name0).read_bytes())
    (dest / name1).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(PipelineError, match=name1):
        _fetch(dest, [f"{server}/notfound/"])
    assert (dest / name0).read_bytes() == canonical_gzip(PAYLOADS[FILE_NAMES[0]])
    _fetch(dest, [str(good_dir)])
    _assert_complete(dest)
    _fetch(dest, [f"{server}/notfound/"])  # everything present: no download needed
    _assert_complete(dest)


def test_fetch_stage_on_real_mirror(tmp_path):
    mirror = SHARED / "mnist"
    if not mirror.is_dir():
        pytest.skip(f"{mirror} not present")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = dict(os.environ, DATASET_MIRROR=str(mirror))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    raw = tmp_path / "data" / "raw"
    for fspec in MNIST.files:
        payload = gunzip((raw / fspec.gz_name).read_bytes(), fspec.gz_name, limit=fspec.size)
        assert hashlib.sha256(payload).hexdigest() == fspec.sha256
    assert '"name": "mnist"' in (raw / "dataset.json").read_text()


def test_fetch_stage_reports_bad_mirror_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = dict(os.environ, DATASET_MIRROR="ftp://example.org/mnist/")
    result = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("fetch: error: DATASET_MIRROR") and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
