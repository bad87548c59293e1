"""The .bin/.idx format: round trip, byte layout from the spec, and every malformed-file error."""
import os
import struct

import numpy as np
import pytest

from megatron_th.data.indexed import (IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError,
                                      best_token_dtype)


def _build(prefix, docs, dtype=np.uint16):
    with IndexedDatasetBuilder(prefix, dtype) as b:
        for d in docs:
            b.add_document(d)


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=n) for n in (5, 0, 1, 300, 17)]
    _build(tmp_path / "ds", docs)
    ds = IndexedDataset(tmp_path / "ds")
    assert len(ds) == 5 and ds.dtype == np.uint16
    assert list(ds.sizes) == [5, 0, 1, 300, 17]
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    np.testing.assert_array_equal(ds.get(3, 10, 5), docs[3][10:15])
    assert ds.num_tokens == 323
    with pytest.raises(IndexError):
        ds.get(0, 3, 5)


def test_bytes_match_the_megatron_spec(tmp_path):
    """Written from the MMIDIDX v1 spec, independently of the reader."""
    docs = [[1, 2, 3], [7], [65535, 0]]
    _build(tmp_path / "ds", docs, np.uint16)
    idx = (tmp_path / "ds.idx").read_bytes()
    expected = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
    expected += struct.pack("<Q", 3) + struct.pack("<Q", 4)
    expected += struct.pack("<3i", 3, 1, 2)               # lengths, int32
    expected += struct.pack("<3q", 0, 6, 8)               # byte pointers, int64
    expected += struct.pack("<4q", 0, 1, 2, 3)            # document index
    assert idx == expected
    assert (tmp_path / "ds.bin").read_bytes() == struct.pack("<6H", 1, 2, 3, 7, 65535, 0)


def test_int32_dtype_code_and_vocab_rule(tmp_path):
    assert best_token_dtype(65499) == np.uint16 and best_token_dtype(65500) == np.int32
    _build(tmp_path / "big", [[100000, 5]], np.int32)
    assert (tmp_path / "big.idx").read_bytes()[17] == 4
    np.testing.assert_array_equal(IndexedDataset(tmp_path / "big")[0], [100000, 5])


def test_token_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        _build(tmp_path / "ds", [[70000]], np.uint16)
    assert not os.path.exists(tmp_path / "ds.idx") and not os.path.exists(tmp_path / "ds.bin.tmp")


def test_builder_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(tmp_path / "ds") as b:
            b.add_document([1, 2])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good(tmp_path):
    _build(tmp_path / "ds", [[1, 2, 3], [4, 5]])
    return tmp_path / "ds"


def _corrupt(path, offset, data):
    b = bytearray(open(path, "rb").read())
    b[offset:offset + len(data)] = data
    open(path, "wb").write(bytes(b))


@pytest.mark.parametrize("offset,data,msg", [
    (0, b"NOTMEGAT\x00", "magic"),
    (9, struct.pack("<Q", 2), "version 2"),
    (17, b"\x09", "dtype code 9"),
])
def test_bad_header(good, offset, data, msg):
    _corrupt(f"{good}.idx", offset, data)
    with pytest.raises(IndexedDatasetError, match=msg) as e:
        IndexedDataset(good)
    assert "ds.idx" in str(e.value)


def test_truncated_idx(good):
    raw = open(f"{good}.idx", "rb").read()
    open(f"{good}.idx", "wb").write(raw[:-3])
    with pytest.raises(IndexedDatasetError, match=r"ds\.idx: truncated"):
        IndexedDataset(good)
    open(f"{good}.idx", "wb").write(raw[:20])
    with pytest.raises(IndexedDatasetError, match="truncated"):
        IndexedDataset(good)


def test_short_bin(good):
    raw = open(f"{good}.bin", "rb").read()
    open(f"{good}.bin", "wb").write(raw[:-2])
    with pytest.raises(IndexedDatasetError, match=r"ds\.bin: data file is 8 bytes, index needs 10"):
        IndexedDataset(good)


def test_missing_files(tmp_path, good):
    os.remove(f"{good}.bin")
    with pytest.raises(IndexedDatasetError, match="data file missing"):
        IndexedDataset(good)
    with pytest.raises(IndexedDatasetError, match="cannot open"):
        IndexedDataset(tmp_path / "nothing")


def test_bad_document_index(good):
    size = os.path.getsize(f"{good}.idx")
    _corrupt(f"{good}.idx", size - 8, struct.pack("<q", 5))
    with pytest.raises(IndexedDatasetError, match="document index"):
        IndexedDataset(good)
