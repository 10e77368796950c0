"""Read and write the IDX format of MNIST-style datasets (unsigned bytes only).

Layout (big-endian): two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions, one uint32 per dimension, then the items in C order.
Sizes are checked against the header *before* anything is allocated, so a
damaged header claiming billions of items is refused cheaply.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_classification.infra.errors import PipelineError

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# Largest decompressed file accepted by read_idx_gz (MNIST's biggest is 47 MB).
MAX_DECOMPRESSED_BYTES = 128 * 1024 * 1024

_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
               0x0D: "float32", 0x0E: "float64"}
_REFETCH = "delete it and run the fetch stage again (dvc repro fetch)"


def parse_idx(data: bytes, source: str, expected_ndim: int | None = None) -> np.ndarray:
    """Decode IDX ``data`` into a read-only uint8 array of shape (N,) or (N, H, W).

    ``source`` names the data in error messages. Raises PipelineError for a bad
    magic number, a type other than 0x08, a rank other than 1 or 3 (or other than
    ``expected_ndim`` when given), or a payload whose length differs from the product of
    the dimensions.
    """
    data = memoryview(data).cast("B")
    if len(data) < 4:
        raise PipelineError(f"{source}: only {len(data)} bytes; expected an IDX header of at least 4 bytes")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise PipelineError(
            f"{source}: bad IDX magic number {bytes(data[:4]).hex()}; expected it to start with two zero bytes "
            "(is this an MNIST-style IDX file?)"
        )
    if code != 0x08:
        name = _TYPE_NAMES.get(code, "unknown type")
        raise PipelineError(
            f"{source}: IDX type code 0x{code:02X} ({name}); only 0x08 (unsigned byte) is supported"
        )
    if ndim not in (1, 3):
        raise PipelineError(f"{source}: IDX file has {ndim} dimensions; expected 1 (labels) or 3 (images)")
    if expected_ndim is not None and ndim != expected_ndim:
        kinds = {1: "a label file (N)", 3: "an image file (N x 28 x 28)"}
        raise PipelineError(
            f"{source}: IDX header (magic {bytes(data[:4]).hex()}) is that of {kinds[ndim]}; expected "
            f"{kinds[expected_ndim]} (magic 000008{expected_ndim:02x}) — were the image and label files swapped?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PipelineError(f"{source}: IDX header is cut short ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = 1
    for d in dims:  # Python ints: no overflow, nothing allocated
        expected *= d
    payload = len(data) - header
    if payload != expected:
        shape = "x".join(str(d) for d in dims)
        raise PipelineError(
            f"{source}: IDX header declares {shape} = {expected} bytes of data but the file holds {payload}; "
            "the file is truncated or corrupt"
        )
    try:
        return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    except ValueError:  # e.g. 0 x 3000000000 x 3000000000: no data, but more than NumPy can index
        shape = "x".join(str(d) for d in dims)
        raise PipelineError(f"{source}: IDX header declares dimensions {shape}, which no array can have; "
                            f"the file is corrupt; {_REFETCH}") from None


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array of shape (N,) or (N, H, W) as IDX bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_idx needs a uint8 array, got {array.dtype}")
    if array.ndim not in (1, 3):
        raise ValueError(f"encode_idx needs a 1-D or 3-D array, got shape {array.shape}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"dimension too large for IDX: {array.shape}")
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def gunzip(data: bytes, source: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress gzip ``data`` (one or more members), refusing output longer than ``limit`` bytes.

    Raises PipelineError naming ``source`` for data that is not gzip, is corrupt,
    is truncated or decompresses to more than ``limit`` bytes.
    """
    if data[:2] != b"\x1f\x8b":
        raise PipelineError(f"{source} is not a gzip file (starts with {bytes(data[:4])!r}; expected 1f 8b)")
    parts: list[bytes] = []
    total = 0
    rest = bytes(data)
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(rest, limit - total + 1)
        except zlib.error as exc:
            raise PipelineError(f"{source} is a corrupt gzip file ({exc})") from None
        total += len(out)
        if total > limit:
            raise PipelineError(f"{source} decompresses to more than {limit} bytes; refusing to inflate it")
        parts.append(out)
        if not inflater.eof:
            raise PipelineError(f"{source} is a truncated gzip file (the compressed stream ends early)")
        rest = inflater.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            if rest.strip(b"\x00"):
                raise PipelineError(f"{source} has {len(rest)} bytes of trailing garbage after the gzip data")
            break
    return b"".join(parts)


def read_idx_gz(path: str | os.PathLike, expected_ndim: int | None = None,
                limit: int = MAX_DECOMPRESSED_BYTES) -> np.ndarray:
    """Read a gzip-compressed IDX file into a read-only uint8 array (see :func:`parse_idx`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path} not found; run the fetch stage first (dvc repro fetch)") from None
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse_idx(gunzip(data, str(path), limit), str(path), expected_ndim)
    except PipelineError as exc:
        raise PipelineError(f"{exc}; {_REFETCH}") from None


def check_images_labels(images: np.ndarray, labels: np.ndarray, source: str) -> None:
    """Raise PipelineError unless images are uint8 (N, 28, 28) and labels uint8 (N,) in 0..9."""
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise PipelineError(f"{source}: images and labels must be uint8, got {images.dtype} and {labels.dtype}")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise PipelineError(f"{source}: images have shape {images.shape}; expected (N, 28, 28)")
    if labels.ndim != 1:
        raise PipelineError(f"{source}: labels have shape {labels.shape}; expected (N,)")
    if len(images) != len(labels):
        raise PipelineError(f"{source}: {len(images)} images but {len(labels)} labels; expected equal counts")
    if len(labels) == 0:
        raise PipelineError(f"{source}: holds no samples; expected at least one")
    top = int(labels.max())
    if top >= NUM_CLASSES:
        bad = int(np.count_nonzero(labels >= NUM_CLASSES))
        raise PipelineError(f"{source}: {bad} labels outside 0..9 (largest {top}); expected digits 0..9")


def load_images_labels(images_path: str | os.PathLike, labels_path: str | os.PathLike
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file: uint8 (N, 28, 28) pixels 0..255 and uint8 (N,) in 0..9."""
    images = read_idx_gz(images_path, expected_ndim=3)
    labels = read_idx_gz(labels_path, expected_ndim=1)
    check_images_labels(images, labels, f"{images_path} + {labels_path}")
    return images, labels
