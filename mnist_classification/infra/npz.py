"""Reading ``.npy`` and ``.npz`` files safely: nothing in them is executed, sizes are checked before use.

An ``.npz`` file is a zip archive of ``.npy`` members. :class:`NpzArchive`
checks the archive's table of contents and every member's ``.npy`` header
before any array is allocated: members are stored or deflated (deflate expands
data at most :data:`MAX_DEFLATE_RATIO`-fold), their compressed data fit in the
file without overlapping, no array holds pickled objects, and each header's
shape times its item size is exactly the member's size. So an array can never
be larger than what the file really holds, whatever its header declares, and
arrays that would not fit in the available memory are refused before loading.
"""

from __future__ import annotations

import lzma
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.memory import available_memory, format_bytes

# What reading a damaged, truncated or hand-crafted zip archive can raise besides ValueError.
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError)

#: Deflate turns each compressed bit into at most 258 / 2 bytes: no member expands more than this.
MAX_DEFLATE_RATIO = 1032
_ZIP_LOCAL_HEADER = 30  # bytes before a member's name, extra field and data


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares; ``offset`` is where the data start."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(handle: IO[bytes], size: int) -> NpyHeader:
    """Read the header of ``.npy`` data of ``size`` bytes from ``handle`` (positioned at its start).

    Raises ValueError unless the header is well formed and declares exactly
    ``size`` bytes in all; nothing is allocated. Object dtypes are returned as
    they are (check ``dtype.hasobject``): their size cannot be checked.
    """
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (EOFError, SyntaxError, TypeError, RecursionError, tokenize.TokenError) as exc:
        raise ValueError(f"bad .npy header: {exc}") from None  # cut short, or not a literal NumPy can read
    if any(d < 0 for d in shape):
        raise ValueError(f"bad .npy header: negative dimension in shape {shape}")
    header = NpyHeader(tuple(shape), dtype, fortran_order, handle.tell())
    if not dtype.hasobject and header.offset + header.nbytes != size:
        raise ValueError(f"its header declares {shape} {dtype} = {header.nbytes} bytes of data but it holds "
                         f"{size - header.offset}")
    return header


def npy_file_header(path: str | os.PathLike) -> NpyHeader:
    """The checked header of the ``.npy`` file at ``path`` (see :func:`read_npy_header`).

    Raises ValueError for a bad header and OSError when the file cannot be read.
    """
    with open(path, "rb") as handle:
        return read_npy_header(handle, os.fstat(handle.fileno()).st_size)


class NpzArchive:
    """An ``.npz`` file opened for reading, its contents checked (see the module docstring).

    ``what`` names the file in messages ("model file", "prepared split"); ``hint``
    says how to get a good one. ``headers`` maps each array's name to its
    :class:`NpyHeader`; :meth:`load` reads arrays. Every failure is a PipelineError.
    """

    def __init__(self, path: str | os.PathLike, what: str, hint: str) -> None:
        self.path, self.hint = Path(path), hint
        self.label = f"{what} {self.path}"
        try:
            with open(self.path, "rb") as handle:
                is_zip = handle.read(2) == b"PK"
        except FileNotFoundError:
            raise PipelineError(f"{self.label} not found; {hint}") from None
        except OSError as exc:
            raise PipelineError(f"cannot read {self.label}: {exc.strerror or exc}") from None
        if not is_zip:
            raise PipelineError(f"{self.label} is not an .npz archive (not a zip file); {hint}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (ValueError, *_READ_ERRORS) as exc:
            raise self._unreadable(exc) from None
        try:
            self._members = self._check_contents()
            self.headers = {name: self._read_header(info) for name, info in self._members.items()}
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def _unreadable(self, reason) -> PipelineError:
        return PipelineError(f"{self.label} is truncated or not a readable .npz archive ({reason}); {self.hint}")

    def _check_contents(self) -> dict[str, zipfile.ZipInfo]:
        """Name -> member, after checking what the table of contents says about each one."""
        members: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise self._unreadable(f"member {name!r} is not a .npy array")
            if name[:-4] in members:
                raise self._unreadable(f"two members are named {name!r}")
            if info.flag_bits & 0x1:
                raise self._unreadable(f"{name} is encrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                expandable = info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                expandable = MAX_DEFLATE_RATIO * info.compress_size
            else:
                raise self._unreadable(f"{name}: compression method {info.compress_type} is not supported; "
                                       "expected stored or deflate")
            if info.file_size > expandable:
                raise self._unreadable(f"{name} claims {info.file_size} bytes, more than its "
                                       f"{info.compress_size} stored bytes can hold")
            members[name[:-4]] = info
        # Each member's data must end before the next member starts (or the file ends): entries that
        # share or overlap their data would expand one stream many times over.
        ordered = sorted(members.values(), key=lambda info: info.header_offset)
        following = [info.header_offset for info in ordered[1:]] + [self.path.stat().st_size]
        for info, bound in zip(ordered, following):
            if info.header_offset + _ZIP_LOCAL_HEADER + info.compress_size > bound:
                raise self._unreadable(f"{info.filename} claims {info.compress_size} bytes of data that run into "
                                       f"the next member or past the end of the file")
        return members

    def _read_header(self, info: zipfile.ZipInfo) -> NpyHeader:
        try:
            with self._zip.open(info) as handle:
                header = read_npy_header(handle, info.file_size)
        except (ValueError, *_READ_ERRORS) as exc:
            raise self._unreadable(f"{info.filename}: {exc}") from None
        if header.dtype.hasobject:
            raise PipelineError(f"{self.label} is refused: it holds pickled objects ({info.filename} has dtype "
                                f"{header.dtype}); {self.hint}")
        return header

    def check_memory(self, names) -> None:
        """Refuse to load the arrays ``names`` if together they exceed the memory available."""
        total = sum(self.headers[name].nbytes for name in names)
        room = available_memory()
        if room is not None and total > room:
            raise PipelineError(f"{self.label} holds {format_bytes(total)} of arrays, more than the "
                                f"{format_bytes(room)} of memory available; {self.hint}")

    def load(self, name: str) -> np.ndarray:
        """The array ``name``, read with ``allow_pickle=False`` (its size was checked when the file was opened)."""
        try:
            with self._zip.open(self._members[name]) as handle:  # zipfile checks the CRC at the end
                array = np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, *_READ_ERRORS) as exc:
            raise self._unreadable(exc) from None
        return array


def read_npz(path: str | os.PathLike, what: str, hint: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``, checked as :class:`NpzArchive` checks them."""
    with NpzArchive(path, what, hint) as archive:
        archive.check_memory(archive.headers)
        return {name: archive.load(name) for name in archive.headers}
