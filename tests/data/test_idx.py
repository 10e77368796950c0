"""IDX parsing/encoding, gzip guards and image/label validation."""

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_classification.data.idx import (
    encode_idx,
    gunzip,
    load_images_labels,
    parse_idx,
    read_idx_gz,
)
from mnist_classification.infra.errors import PipelineError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write_gz(path, array):
    path.write_bytes(gzip.compress(encode_idx(array), mtime=0))
    return path


def _pair(tmp_path, images, labels):
    return (_write_gz(tmp_path / "images.gz", images), _write_gz(tmp_path / "labels.gz", labels))


def test_round_trip_1d_and_3d():
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 256, 17, dtype=np.uint8), rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)):
        back = parse_idx(encode_idx(array), "x")
        assert back.dtype == np.uint8 and back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_encode_header_layout():
    data = encode_idx(np.zeros((2, 3, 4), np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", data[4:16]) == (2, 3, 4)
    assert len(data) == 16 + 24


def test_encode_rejects_wrong_dtype_or_rank():
    with pytest.raises(ValueError):
        encode_idx(np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        encode_idx(np.zeros((2, 2), np.uint8))


def test_real_mnist_test_labels():
    path = SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    labels = read_idx_gz(path)
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(labels, minlength=10).tolist() == expected


def test_wrong_magic():
    data = b"\x01\x00" + encode_idx(np.zeros(3, np.uint8))[2:]
    with pytest.raises(PipelineError, match="magic.*two zero bytes"):
        parse_idx(data, "f.idx")


def test_wrong_type_code_is_named():
    data = bytearray(encode_idx(np.zeros(3, np.uint8)))
    data[2] = 0x0D
    with pytest.raises(PipelineError, match=r"f\.idx.*0x0D \(float32\).*only 0x08"):
        parse_idx(bytes(data), "f.idx")


def test_wrong_rank():
    data = b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 2) + bytes(4)
    with pytest.raises(PipelineError, match="2 dimensions; expected 1.*or 3"):
        parse_idx(data, "f.idx")


@pytest.mark.parametrize("delta", [-1, 1])
def test_dims_disagree_with_size(delta):
    data = encode_idx(np.zeros((2, 3, 3), np.uint8))
    data = data[:delta] if delta < 0 else data + b"\x00"
    with pytest.raises(PipelineError, match="declares 2x3x3 = 18 bytes"):
        parse_idx(data, "f.idx")


def test_short_header():
    with pytest.raises(PipelineError, match="header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00", "f.idx")
    with pytest.raises(PipelineError, match="4 bytes"):
        parse_idx(b"\x00", "f.idx")


def test_header_claiming_billions_is_refused_without_allocating():
    data = b"\x00\x00\x08\x03" + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(100)
    tracemalloc.start()
    try:
        with pytest.raises(PipelineError, match="declares"):
            parse_idx(data, "huge.idx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_gzip_bomb_is_refused(tmp_path):
    data = gzip.compress(bytes(5_000_000))
    with pytest.raises(PipelineError, match="more than 1000 bytes"):
        gunzip(data, "bomb.gz", limit=1000)


def test_truncated_gzip_names_file(tmp_path):
    full = gzip.compress(encode_idx(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(PipelineError, match=r"cut\.gz is a truncated gzip file.*fetch stage"):
        read_idx_gz(path)


def test_corrupt_gzip_and_not_gzip(tmp_path):
    full = bytearray(gzip.compress(encode_idx(np.arange(200, dtype=np.uint8))))
    full[-6] ^= 0xFF  # CRC / length trailer
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(full))
    with pytest.raises(PipelineError, match=r"bad\.gz"):
        read_idx_gz(path)
    path.write_bytes(b"<html>oops</html>")
    with pytest.raises(PipelineError, match="not a gzip file"):
        read_idx_gz(path)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found.*fetch"):
        read_idx_gz(tmp_path / "nope.gz")


def test_load_images_labels_ok(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9, 5], np.uint8)
    x, y = load_images_labels(*_pair(tmp_path, images, labels))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_count_mismatch(tmp_path):
    paths = _pair(tmp_path, np.zeros((6, 28, 28), np.uint8), np.zeros(5, np.uint8))
    with pytest.raises(PipelineError, match="6 images but 5 labels"):
        load_images_labels(*paths)


def test_labels_outside_range(tmp_path):
    paths = _pair(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 10, 200], np.uint8))
    with pytest.raises(PipelineError, match="2 labels outside 0..9"):
        load_images_labels(*paths)


def test_wrong_image_size_and_swapped_files(tmp_path):
    paths = _pair(tmp_path, np.zeros((3, 32, 32), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(PipelineError, match=r"\(3, 32, 32\); expected \(N, 28, 28\)"):
        load_images_labels(*paths)
    with pytest.raises(PipelineError, match=r"is that of a label file \(N\); expected an image file "
                                            r"\(N x 28 x 28\) \(magic 00000803\) — were the image and label"):
        load_images_labels(paths[1], paths[0])


def test_label_file_with_an_image_header_is_named_as_such(tmp_path):
    """A label payload behind an image magic: the header is the problem, not a truncated payload."""
    paths = _pair(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3], np.uint8))
    labels = gzip.decompress(paths[1].read_bytes())
    paths[1].write_bytes(gzip.compress(b"\x00\x00\x08\x03" + labels[4:]))
    with pytest.raises(PipelineError, match=r"labels\S*: IDX header \(magic 00000803\) is that of an image file"):
        load_images_labels(*paths)


_VALID = [encode_idx(np.arange(12, dtype=np.uint8)), encode_idx(np.ones((2, 2, 3), np.uint8))]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    try:
        out = parse_idx(data, "fuzz")
    except PipelineError:
        return
    assert out.dtype == np.uint8 and out.ndim in (1, 3)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=4),
       st.integers(0, 40), st.booleans())
def test_fuzz_mutated_files(valid, edits, cut, compress):
    data = bytearray(valid)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[: len(data) - cut % 8])
    try:
        if compress:
            blob = bytearray(gzip.compress(data, mtime=0))
            for pos, value in edits:
                blob[pos % len(blob)] = value
            data = gunzip(bytes(blob), "fuzz.gz", limit=10_000)
        out = parse_idx(data, "fuzz")
    except PipelineError:
        return
    assert out.dtype == np.uint8 and out.size == len(data) - 4 - 4 * out.ndim
