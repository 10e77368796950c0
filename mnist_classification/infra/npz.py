"""Reading ``.npz`` archives safely: nothing in them is executed, every failure is a clear error."""

from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mnist_classification.infra.errors import PipelineError

# What reading a damaged, truncated or hand-crafted zip archive can raise besides ValueError.
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError)


def read_npz(path: str | os.PathLike, what: str, hint: str) -> dict[str, np.ndarray]:
    """Every array of the archive at ``path``, loaded with ``allow_pickle=False``.

    ``what`` names the file in messages ("model file", "prepared split"); ``hint``
    says how to get a good one. Raises PipelineError if the file is missing,
    unreadable, not a zip archive (np.load would return a bare ``.npy`` array),
    holds pickled objects, or is truncated or corrupt.
    """
    label = f"{what} {Path(path)}"
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(2) == b"PK"
    except FileNotFoundError:
        raise PipelineError(f"{label} not found; {hint}") from None
    except OSError as exc:
        raise PipelineError(f"cannot read {label}: {exc.strerror or exc}") from None
    if not is_zip:
        raise PipelineError(f"{label} is not an .npz archive (not a zip file); {hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise PipelineError(f"{label} is refused: it holds pickled objects ({exc})") from None
        raise PipelineError(f"{label} is truncated or not a readable .npz archive ({exc}); {hint}") from None
    except _READ_ERRORS as exc:
        raise PipelineError(f"{label} is truncated or not a readable .npz archive ({exc}); {hint}") from None
