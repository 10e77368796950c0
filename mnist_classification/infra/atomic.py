"""Atomic, deterministic writers for every artifact the pipeline produces.

Each writer writes to a temporary file in the destination folder, flushes and
fsyncs it, then renames it over the destination: a reader (or DVC) sees either
the old file or the complete new one, never a half-written artifact. A failed
write (disk full, permission denied, Ctrl-C) removes the temporary file and
raises :class:`PipelineError` naming the destination.

Inside :func:`all_or_nothing`, the renames wait until the block ends, so a
stage's outputs change together: an error or Ctrl-C while the stage is still
writing (say, its third plot) leaves every previous output as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mnist_classification.infra.errors import PipelineError

# A fixed timestamp for zip members: numpy's savez stamps the current time,
# which would make identical models differ byte for byte.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# (temporary file, destination) pairs waiting for the end of an all_or_nothing block, or None.
_pending: list[tuple[Path, Path]] | None = None


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Defer the atomic writers' renames to the end of the block: all files change, or none does."""
    global _pending
    if _pending is not None:
        raise RuntimeError("all_or_nothing blocks do not nest")
    _pending = []
    try:
        yield
        for tmp, path in _pending:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise PipelineError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        for tmp, _ in _pending:  # the ones not renamed: an error, Ctrl-C or a failed rename
            tmp.unlink(missing_ok=True)
        _pending = None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary sibling of ``path`` for binary writing; rename it into place on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PipelineError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if _pending is None:
            os.replace(tmp, path)
        else:
            _pending.append((tmp, path))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PipelineError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Mapping) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON with a trailing newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Atomically write a CSV file with ``header`` and ``rows`` (``\\n`` line endings)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """Atomically write ``arrays`` as an ``.npz`` file that is byte-identical for identical input.

    Object arrays are refused so that the file always loads with ``allow_pickle=False``.
    """
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_open(path) as handle:
        with zipfile.ZipFile(handle, "w", compression=compression, allowZip64=True) as archive:
            for name in sorted(arrays):
                array = np.asarray(arrays[name])
                if array.dtype.hasobject:
                    raise ValueError(f"array {name!r} has dtype object; refusing to pickle it")
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = compression
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
