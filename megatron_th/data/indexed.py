"""Megatron-compatible indexed datasets: ``name.idx`` + ``name.bin`` ("MMIDIDX", version 1).

Layout of ``.idx`` (little-endian, no padding)::

    0   9     magic b"MMIDIDX\\x00\\x00"
    9   8     version u64 = 1
    17  1     dtype code u8 (see DTYPE_CODES)
    18  8     sequence count S, u64
    26  8     document-index length D, u64 (= documents + 1)
    34  4*S   sequence lengths, int32 (tokens)
    ..  8*S   sequence pointers, int64 (byte offsets into .bin)
    ..  8*D   document index, int64: [0, ..., S]

``.bin`` holds the sequences' tokens back to back, no header. For GPT data one document is one
sequence. Files written here load in Megatron-LM and vice versa.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, S, D -> 34 bytes

DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32,
    5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A malformed or inconsistent .idx/.bin pair; the message names the file."""


def best_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 below 65500 tokens (Megatron's rule), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.idx"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{prefix}.bin"


def dataset_exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(idx_path(prefix)) and os.path.isfile(bin_path(prefix))


CHUNK = 1 << 24  # elements per vectorised pass over a memory-mapped array (bounds temporaries)


def _check_pointers(path: str, lengths: np.ndarray, pointers: np.ndarray, dtype: np.dtype) -> None:
    """Sequence i must start at byte ``sum(lengths[:i]) * itemsize``: the back-to-back layout that
    every Megatron writer produces (megatron/core/datasets/indexed_dataset.py
    ``_IndexWriter._sequence_pointers``). Megatron's reader trusts the pointers; a pointer off that
    layout means a damaged index or a dtype code that does not match the .bin, so it is refused.
    Vectorised in chunks of CHUNK sequences. Raises IndexedDatasetError naming ``path``."""
    start = 0  # byte offset of the first sequence of the chunk
    for lo in range(0, len(lengths), CHUNK):
        nbytes = lengths[lo:lo + CHUNK].astype(np.int64) * dtype.itemsize
        ends = np.cumsum(nbytes) + start
        expected = ends - nbytes
        bad = np.flatnonzero(pointers[lo:lo + CHUNK] != expected)
        if len(bad):
            i = int(bad[0])
            raise IndexedDatasetError(
                f"{path}: sequence {lo + i} points at byte {int(pointers[lo + i])}, but the lengths before it "
                f"at {dtype.itemsize} bytes per {dtype.name} token put it at {int(expected[i])} (a damaged "
                f"index, or a dtype code that does not match the .bin)")
        start = int(ends[-1])


def _read_index(path: str):
    """Parse and validate an .idx file; returns (dtype, lengths, pointers, doc_idx) as mmap views."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise IndexedDatasetError(f"{path}: cannot open index file ({e.strerror})") from None
    if size < HEADER.size:
        raise IndexedDatasetError(f"{path}: truncated index ({size} bytes, header needs {HEADER.size})")
    with open(path, "rb") as f:
        magic, version, code, n_seq, n_doc = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise IndexedDatasetError(f"{path}: not a Megatron MMIDIDX index (magic {magic!r})")
    if version != VERSION:
        raise IndexedDatasetError(f"{path}: unsupported index version {version} (expected {VERSION})")
    if code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{path}: unknown dtype code {code}")
    expected = HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if size != expected:
        what = "truncated" if size < expected else "trailing bytes in"
        raise IndexedDatasetError(
            f"{path}: {what} index ({size} bytes, header says {expected} for {n_seq} sequences)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    off = HEADER.size
    lengths = np.frombuffer(buf, dtype="<i4", count=n_seq, offset=off)
    off += 4 * n_seq
    pointers = np.frombuffer(buf, dtype="<i8", count=n_seq, offset=off)
    off += 8 * n_seq
    doc_idx = np.frombuffer(buf, dtype="<i8", count=n_doc, offset=off)
    dtype = np.dtype(DTYPE_CODES[code])
    if n_doc < 1 or doc_idx[0] != 0 or doc_idx[-1] != n_seq:
        raise IndexedDatasetError(f"{path}: document index must run from 0 to {n_seq}")
    if n_seq and lengths.min() < 0:
        i = int(np.flatnonzero(lengths < 0)[0])
        raise IndexedDatasetError(f"{path}: sequence {i} has a negative length ({int(lengths[i])})")
    if np.any(np.diff(doc_idx) < 0):
        i = int(np.flatnonzero(np.diff(doc_idx) < 0)[0])
        raise IndexedDatasetError(f"{path}: document index decreases at entry {i + 1} "
                                  f"({int(doc_idx[i])} -> {int(doc_idx[i + 1])})")
    _check_pointers(path, lengths, pointers, dtype)
    return dtype, lengths, pointers, doc_idx


class IndexedDataset:
    """Read-only, memory-mapped view of a ``prefix.idx`` / ``prefix.bin`` pair.

    ``ds[i]`` is sequence i as a numpy array (a zero-copy view); ``ds.get(i, offset, length)``
    reads part of one. ``ds.sizes`` are the token counts, ``ds.document_indices`` the doc index.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        self.dtype, self.sizes, self.pointers, self.document_indices = _read_index(idx_path(prefix))
        path = bin_path(prefix)
        if not os.path.isfile(path):
            raise IndexedDatasetError(f"{path}: data file missing")
        need = 0  # pointers are back to back (_check_pointers): the last sequence ends the data
        if len(self.sizes):
            need = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize
        self.data_bytes = need
        have = os.path.getsize(path)
        if have < need:
            raise IndexedDatasetError(f"{path}: data file is {have} bytes, index needs {need}")
        self._bin = np.memmap(path, dtype=np.uint8, mode="r") if have else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.sizes)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"{self.prefix}: slice [{offset}, {offset + length}) outside sequence {i} of {size}")
        start = int(self.pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def token_range(self) -> tuple[int, int] | None:
        """(smallest, largest) token id over every sequence, or None when there is no token.

        One vectorised min/max pass over the memory-mapped ``.bin`` (the bytes the index
        describes, back to back), CHUNK tokens at a time so temporaries stay bounded; it reads
        the whole file once, so callers cache the result (gpt_dataset.token_ranges)."""
        n = self.data_bytes // self.dtype.itemsize
        if n == 0:
            return None
        tokens = np.frombuffer(self._bin, dtype=self.dtype, count=n)
        lo, hi = None, None
        for i in range(0, n, CHUNK):
            part = tokens[i:i + CHUNK]
            a, b = part.min(), part.max()
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        return (lo.item(), hi.item())


class IndexedDatasetBuilder:
    """Streams sequences to ``prefix.bin.tmp`` and writes the index on ``finalize()``.

    Both files appear under their real names only at the end (rename), so an interrupted build
    never leaves a valid-looking half dataset. Use as a context manager: an exception discards.
    ``add_documents`` takes many one-sequence documents as one token buffer and their lengths (the
    preprocessing workers' output); the files are the same as from ``add_document`` per document.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = bin_path(prefix) + ".tmp"
        self._idx_tmp = idx_path(prefix) + ".tmp"
        self._bin = open(self._bin_tmp, "wb")
        self._n_seq = 0
        self._lengths: list[int] = []      # since the last add_documents, then joined with ...
        self._doc_idx: list[int] = [0]
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []  # ... earlier (lengths, doc index) blocks

    def _write_tokens(self, tokens) -> int:
        arr = np.asarray(tokens)
        if arr.size and self.dtype.kind in "ui" and arr.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise ValueError(f"{self.prefix}: token id out of range for {self.dtype}")
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._bin.write(memoryview(arr).cast("B"))
        return int(arr.size)

    def add_item(self, tokens) -> None:
        """Append one sequence (any int array-like); values must fit the dtype."""
        self._lengths.append(self._write_tokens(tokens))
        self._n_seq += 1

    def end_document(self) -> None:
        self._doc_idx.append(self._n_seq)

    def add_document(self, tokens) -> None:
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, tokens, lengths) -> None:
        """Append ``len(lengths)`` documents of one sequence each: document i is the next
        ``lengths[i]`` tokens of the 1-D ``tokens`` (``sum(lengths) == tokens.size``; values must
        fit the dtype; a buffer already of the dataset's dtype is written as it is)."""
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(lengths) and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{self.prefix}: document lengths must be in [0, 2^31)")
        tokens = np.asarray(tokens).reshape(-1)
        if int(lengths.sum()) != tokens.size:
            raise ValueError(f"{self.prefix}: lengths sum to {int(lengths.sum())}, tokens hold {tokens.size}")
        self._write_tokens(tokens)
        self._parts.append((np.asarray(self._lengths, dtype="<i4"), np.asarray(self._doc_idx, dtype="<i8")))
        self._parts.append((lengths.astype("<i4"), self._n_seq + np.arange(1, len(lengths) + 1, dtype="<i8")))
        self._n_seq += len(lengths)
        self._lengths, self._doc_idx = [], []

    def finalize(self) -> None:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        parts = self._parts + [(np.asarray(self._lengths, dtype="<i4"), np.asarray(self._doc_idx, dtype="<i8"))]
        lengths = np.concatenate([p[0] for p in parts])
        pointers = np.zeros(len(lengths), dtype="<i8")
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.concatenate([p[1] for p in parts])
        with open(self._idx_tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], len(lengths), len(doc_idx)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_idx.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, idx_path(self.prefix))

    def discard(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        for p in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self.discard()
        return False
