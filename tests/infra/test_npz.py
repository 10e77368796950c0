""".npy headers and .npz archives: sizes declared in headers and tables of contents are checked before use."""

import io
import zipfile

import numpy as np
import pytest

from mnist_classification.infra import atomic, npz
from mnist_classification.infra.errors import PipelineError
from mnist_classification.infra.npz import NpzArchive, npy_file_header, read_npz


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array))
    return buffer.getvalue()


def _lying_npy(shape, dtype="<f4", data=b"") -> bytes:
    """An .npy header declaring ``shape`` followed by ``data`` (however short)."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}".encode() + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _read(path):
    return read_npz(path, "test archive", "make a new one")


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_and_headers(tmp_path, compress):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array("text"), "c": np.zeros(0, np.uint8)}
    atomic.save_npz(tmp_path / "x.npz", arrays, compress=compress)
    loaded = _read(tmp_path / "x.npz")
    assert loaded.keys() == arrays.keys() and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    with NpzArchive(tmp_path / "x.npz", "test archive", "") as archive:
        assert {k: (h.shape, h.dtype) for k, h in archive.headers.items()} == {
            "a": ((2, 3), np.float32), "b": ((), np.dtype("<U4")), "c": ((0,), np.uint8)}
        assert archive.headers["a"].nbytes == 24


def test_a_header_declaring_more_than_its_data_is_refused_before_allocating(tmp_path):
    """A 200-byte member declaring 10^12 floats: numpy itself would first try np.empty(10^12)."""
    path = tmp_path / "x.npz"
    _zip(path, {"a.npy": _lying_npy((10**6, 10**6), data=bytes(16))})
    with pytest.raises(PipelineError, match=r"a\.npy: its header declares \(1000000, 1000000\) float32 = "
                                            r"4000000000000 bytes of data but it holds 16"):
        _read(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_table_of_contents_lying_about_sizes_is_refused(tmp_path, compression):
    path = tmp_path / "x.npz"
    _zip(path, {"a.npy": _npy(np.zeros(100, np.float32))}, compression)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    data[entry + 24:entry + 28] = (2**32 - 2).to_bytes(4, "little")  # uncompressed size in the central directory
    path.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"a\.npy claims 4294967294 bytes, more than its \d+ stored bytes"):
        _read(path)


def test_members_sharing_their_data_are_refused(tmp_path):
    """The overlapping-entries zip bomb: many directory entries pointing at one compressed stream."""
    path = tmp_path / "x.npz"
    _zip(path, {"a.npy": _npy(np.zeros(1000, np.float32))}, zipfile.ZIP_DEFLATED)
    data = path.read_bytes()
    entry, end = data.find(b"PK\x01\x02"), data.find(b"PK\x05\x06")
    directory = data[entry:end]
    copies = [directory.replace(b"a.npy", name.encode()) for name in ("a.npy", "b.npy", "c.npy")]
    count = len(copies).to_bytes(2, "little")
    record = bytearray(data[end:])
    record[8:10] = record[10:12] = count
    record[12:16] = (len(directory) * 3).to_bytes(4, "little")
    path.write_bytes(data[:entry] + b"".join(copies) + bytes(record))
    with pytest.raises(PipelineError, match=r"\w\.npy claims \d+ bytes of data that run into the next member"):
        _read(path)


@pytest.mark.parametrize("member, data, message", [
    ("notes.txt", b"hello", "member 'notes.txt' is not a .npy array"),
    ("a.npy", _lying_npy((-1, 3)), r"negative dimension in shape \(-1, 3\)"),
    ("a.npy", b"\x93NUMPY\x01\x00\x04\x00{}}\n", "bad .npy header"),
    ("a.npy", b"\x93NUMPY\x03\x00", "unsupported .npy format version 3.0"),
    ("a.npy", b"\x93NUM", "EOF: reading magic string"),
])
def test_bad_members(tmp_path, member, data, message):
    path = tmp_path / "x.npz"
    _zip(path, {member: data})
    with pytest.raises(PipelineError, match=message) as info:
        _read(path)
    assert str(info.value).startswith(f"test archive {path} is truncated or not a readable .npz archive (")


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "x.npz"
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _zip(path, {"a.npy": buffer.getvalue()})
    with pytest.raises(PipelineError, match=r"is refused: it holds pickled objects \(a\.npy has dtype object\)"):
        _read(path)


def test_arrays_larger_than_the_memory_available_are_refused(tmp_path, monkeypatch):
    atomic.save_npz(tmp_path / "x.npz", {"a": np.zeros(1000, np.float32)})
    monkeypatch.setattr(npz, "available_memory", lambda: 3000)
    with pytest.raises(PipelineError, match=r"holds 3\.9 KiB of arrays, more than the 2\.9 KiB of memory available"):
        _read(tmp_path / "x.npz")


def test_npy_file_header(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((5, 28, 28), np.uint8))
    header = npy_file_header(path)
    assert (header.shape, header.dtype, header.nbytes) == ((5, 28, 28), np.uint8, 5 * 784)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"declares \(5, 28, 28\) uint8 = 3920 bytes of data but it holds 3919"):
        npy_file_header(path)
