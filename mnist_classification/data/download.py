"""Download a dataset's IDX files from a list of mirrors, verify them and store them canonically.

Mirrors are tried in order: ``DATASET_MIRROR`` (a local folder or an http(s) URL
prefix) first, then the dataset's public mirrors. A file is accepted only when
its decompressed payload matches the SHA-256 pin; it is then written re-gzipped
canonically (level 6, mtime 0, no file name, OS byte 255), so ``data/raw`` is
byte-identical whichever mirror served it. Every write is atomic.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import IO, Sequence
from urllib.parse import urlsplit

from mnist_classification.data.datasets import DatasetSpec, FileSpec, get_dataset
from mnist_classification.data.idx import gunzip
from mnist_classification.infra.atomic import write_bytes, write_json
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.progress import ProgressBar

FROM_ENV = object()  # default of ``mirror_env``: read DATASET_MIRROR when called
ENV_VAR = "DATASET_MIRROR"
MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024  # per file, compressed
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_USER_AGENT = "mnist-classification/0.1 (+python urllib)"


class _Failure(Exception):
    """One mirror failed to deliver one file; ``transient`` failures are retried."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


# --------------------------------------------------------------------------- mirrors

def _is_url(mirror: str) -> bool:
    return urlsplit(mirror).scheme in ("http", "https")


def normalise_mirror(value: str, what: str) -> str:
    """Return an http(s) URL prefix ending in ``/`` or an absolute folder path; ``what`` names it in errors."""
    value = value.strip()
    scheme = urlsplit(value).scheme.lower()
    if scheme in ("http", "https"):
        if not urlsplit(value).netloc:
            raise PipelineError(f"{what} is {value!r}, which is not a valid URL; expected e.g. https://host/mnist/")
        return value if value.endswith("/") else value + "/"
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise PipelineError(
            f"{what} is {value!r}: scheme {scheme}:// is not supported; only http://, https:// URL "
            f"prefixes and local folder paths are accepted (e.g. {ENV_VAR}=/path/to/mnist)"
        )
    return str(Path(value).expanduser().absolute())


def mirror_list(spec: DatasetSpec, mirror_env: str | None, mirrors: Sequence[str] | None = None) -> list[str]:
    """Mirrors to try, in order: ``mirror_env`` (if set), then ``mirrors`` or the spec's public ones."""
    result = []
    if mirror_env and mirror_env.strip():
        result.append(normalise_mirror(mirror_env, ENV_VAR))
    for m in spec.mirrors if mirrors is None else mirrors:
        m = normalise_mirror(m, "mirror")
        if m not in result:
            result.append(m)
    return result


# --------------------------------------------------------------------------- progress

def _mb(n: int) -> str:
    """A byte count for humans: 10 bytes, 28.9 kB, 9.8 MB."""
    if n < 1000:
        return f"{n} bytes"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


# --------------------------------------------------------------------------- transports

class _BoundedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most MAX_REDIRECTS redirects, and only to http(s)."""

    max_redirections = MAX_REDIRECTS
    max_repeats = 2

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise _Failure(f"redirected (HTTP {code}) to {newurl}, which is not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_BoundedRedirects)


def _http_get(url: str, timeout: float, max_bytes: int, progress: ProgressBar) -> bytes:
    """The body of ``url``; raises _Failure with a short reason on any problem."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            if response.headers.get_content_type() == "text/html":
                raise _Failure("served an HTML page (Content-Type text/html) instead of the gzip file; "
                               "the file may have moved or the mirror may need a login")
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length > max_bytes:
                raise _Failure(f"file is {_mb(length)}, more than the {_mb(max_bytes)} limit")
            progress.total = length or 0  # 0: size unknown (chunked or HTTP/1.0 streamed body)
            body = bytearray()
            while chunk := response.read(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise _Failure(f"download exceeded the {_mb(max_bytes)} limit")
                progress.update(len(body))
            progress.update(len(body))
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise _Failure(f"redirect loop or more than {MAX_REDIRECTS} redirects (last HTTP {exc.code})") from None
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise _Failure(f"HTTP {exc.code} {exc.reason}", transient) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Failure(f"timed out (no data for {timeout:g} s)", True) from None
        raise _Failure(f"cannot connect ({exc.reason})", True) from None
    except TimeoutError:
        raise _Failure(f"timed out (no data for {timeout:g} s)", True) from None
    except http.client.IncompleteRead as exc:
        raise _Failure(f"truncated body (connection closed after {len(exc.partial)} bytes)", True) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _Failure(f"connection failed ({type(exc).__name__}: {exc})", True) from None
    except ValueError as exc:  # malformed URL or header
        raise _Failure(f"bad URL or response ({exc})") from None
    if length is not None and len(body) < length:
        raise _Failure(f"truncated body ({len(body)} of {length} bytes)", True)
    return bytes(body)


def _local_get(folder: str, fspec: FileSpec, max_bytes: int) -> bytes:
    """``folder/<name>.gz`` (or the uncompressed ``folder/<name>``); raises _Failure."""
    base = Path(folder)
    if not base.is_dir():
        raise _Failure(f"folder {base} does not exist" if not base.exists() else f"{base} is not a folder")
    path = base / fspec.gz_name
    if not path.exists() and (base / fspec.name).exists():
        path = base / fspec.name
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _Failure(f"{path} is {_mb(size)}, more than the {_mb(max_bytes)} limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise _Failure(f"missing file {path}") from None
    except OSError as exc:
        raise _Failure(f"cannot read {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- verification

def _looks_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in head


def verify_payload(payload: bytes, fspec: FileSpec) -> None:
    """Raise _Failure unless ``payload`` has the pinned size (when known) and SHA-256."""
    if fspec.size is not None and len(payload) != fspec.size:
        raise _Failure(f"decompressed size is {len(payload)} bytes, expected {fspec.size}")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != fspec.sha256:
        raise _Failure(f"checksum mismatch (SHA-256 {digest[:16]}..., expected {fspec.sha256[:16]}...)")


def decode_and_verify(body: bytes, fspec: FileSpec) -> bytes:
    """The verified IDX payload inside a downloaded ``body`` (gzip, or raw IDX); raises _Failure."""
    if body[:2] == b"\x1f\x8b":
        try:
            payload = gunzip(body, fspec.gz_name, **({"limit": fspec.size} if fspec.size else {}))
        except PipelineError as exc:
            raise _Failure(str(exc)) from None
    elif _looks_html(body):
        raise _Failure("served an HTML page instead of the gzip file (an error or login page)")
    elif body[:3] == b"\x00\x00\x08":
        payload = body  # an uncompressed IDX file
    else:
        raise _Failure(f"not a gzip file (starts with {body[:8]!r})")
    verify_payload(payload, fspec)
    return payload


def canonical_gzip(payload: bytes) -> bytes:
    """gzip ``payload`` deterministically: level 6, mtime 0, no file name, OS byte 255 (unknown)."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
    body = deflater.compress(payload) + deflater.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- fetching

def _reuse(path: Path, fspec: FileSpec) -> bool:
    """True if ``path`` already holds the verified payload in canonical form (rewrites it if not canonical)."""
    try:
        data = path.read_bytes()
        payload = decode_and_verify(data, fspec)
    except (OSError, _Failure):
        return False
    canonical = canonical_gzip(payload)
    if canonical != data:
        write_bytes(path, canonical)
    return True


def fetch_file(fspec: FileSpec, mirrors: Sequence[str], *, timeout: float = 30.0, retries: int = 1,
               max_download_bytes: int = MAX_DOWNLOAD_BYTES, stream: IO[str] | None = None
               ) -> tuple[bytes, str]:
    """Fetch and verify one file from the first mirror that delivers it: (payload, mirror).

    Transient failures (timeout, 5xx, cut-off body) are retried ``retries`` times per
    mirror. Raises PipelineError listing every mirror and its reason if all fail.
    """
    failures = []
    for mirror in mirrors:
        for attempt in range(retries + 1):
            progress = ProgressBar(f"  {fspec.gz_name}", 0, stream=stream, unit="B")
            try:
                if _is_url(mirror):
                    body = _http_get(mirror + fspec.gz_name, timeout, max_download_bytes, progress)
                else:
                    body = _local_get(mirror, fspec, max_download_bytes)
                payload = decode_and_verify(body, fspec)
            except _Failure as exc:
                progress.clear()
                again = exc.transient and attempt < retries
                if stream is not None:
                    nxt = "retrying" if again else "trying the next mirror"
                    print(f"  {fspec.gz_name}: {mirror}: {exc.reason}; {nxt}", file=stream)
                if again:
                    continue
                tries = f" (tried {attempt + 1} times)" if attempt else ""
                failures.append(f"{mirror}: {exc.reason}{tries}")
                break
            progress.clear()
            if stream is not None:
                print(f"  {fspec.gz_name}: {_mb(len(body))} from {mirror} (SHA-256 verified)", file=stream)
            return payload, mirror
    tried = "\n".join(f"  - {line}" for line in failures) or "  (no mirrors configured)"
    raise PipelineError(
        f"could not fetch {fspec.gz_name} from any mirror:\n{tried}\n"
        f"Only complete, verified files are kept. If you have the dataset files (e.g. copied from another "
        f"machine), point {ENV_VAR} at the folder holding them, or at an http(s) URL prefix, "
        f"and run again: {ENV_VAR}=/path/to/mnist dvc repro"
    )


def fetch_dataset(dataset: str | DatasetSpec, dest_dir: str | os.PathLike, mirror_env=FROM_ENV, *,
                  mirrors: Sequence[str] | None = None, timeout: float = 30.0, retries: int = 1,
                  progress: bool = True, max_download_bytes: int = MAX_DOWNLOAD_BYTES) -> dict[str, Path]:
    """Fetch, verify and store a dataset's four files plus ``dataset.json`` in ``dest_dir``.

    ``mirror_env`` defaults to ``$DATASET_MIRROR`` (folder or http(s) prefix, tried
    first); ``mirrors`` replaces the spec's public mirrors (tests use it). Files already
    in ``dest_dir`` whose payload verifies are reused. Returns {gz file name: path}.
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    if mirror_env is FROM_ENV:
        mirror_env = os.environ.get(ENV_VAR)
    order = mirror_list(spec, mirror_env, mirrors)
    stream = sys.stderr if progress else None
    dest = Path(dest_dir)
    written = {}
    for fspec in spec.files:
        path = dest / fspec.gz_name
        if path.exists() and _reuse(path, fspec):
            if stream is not None:
                print(f"  {fspec.gz_name}: already present and verified", file=stream)
        else:
            payload, _ = fetch_file(fspec, order, timeout=timeout, retries=retries,
                                    max_download_bytes=max_download_bytes, stream=stream)
            write_bytes(path, canonical_gzip(payload))
        written[fspec.gz_name] = path
    write_json(dest / "dataset.json", {"name": spec.name, "classes": list(spec.classes)})
    written["dataset.json"] = dest / "dataset.json"
    return written
