"""Input records for the data tools: jsonl, jsonl.gz and parquet, with per-record errors.

Every record carries where it came from (file and line, or parquet row) so that bad input can be
reported as ``file:line: reason`` and counted, never silently dropped.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass
from typing import Iterator

# Reasons a record is rejected (the keys of the summary counters).
MALFORMED_JSON = "malformed_json"
NOT_OBJECT = "not_an_object"
MISSING_KEY = "missing_key"
NOT_STRING = "non_string_value"
BAD_UTF8 = "invalid_utf8"
REASONS = (MALFORMED_JSON, NOT_OBJECT, MISSING_KEY, NOT_STRING, BAD_UTF8)


@dataclass
class Record:
    path: str
    line: int                    # 1-based line (jsonl) or row (parquet)
    texts: dict | None = None    # key -> text, when valid
    error: str | None = None     # one of REASONS, when not
    detail: str = ""
    pos: int = 0                 # bytes of this (possibly compressed) file consumed so far

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def expand_inputs(patterns: list[str]) -> list[str]:
    """Expand globs in order; a pattern that matches nothing is an error naming it."""
    out: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat)) if glob.has_magic(pat) else ([pat] if os.path.exists(pat) else [])
        if not hits:
            raise FileNotFoundError(f"--input {pat}: no such file")
        for h in hits:
            if not h.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")):
                raise ValueError(f"--input {h}: unsupported format (use .jsonl, .jsonl.gz or .parquet)")
            out.append(h)
    return out


def _check(rec: Record, obj, keys) -> Record:
    if not isinstance(obj, dict):
        rec.error, rec.detail = NOT_OBJECT, type(obj).__name__
        return rec
    texts = {}
    for k in keys:
        if k not in obj:
            rec.error, rec.detail = MISSING_KEY, k
            return rec
        if not isinstance(obj[k], str):
            rec.error, rec.detail = NOT_STRING, f"{k} is {type(obj[k]).__name__}"
            return rec
        texts[k] = obj[k]
    rec.texts = texts
    return rec


def _iter_jsonl(path: str, keys) -> Iterator[Record]:
    with open(path, "rb") as raw_f, (gzip.open(raw_f) if path.endswith(".gz") else raw_f) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            rec = Record(path, n, pos=raw_f.tell())
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                rec.error, rec.detail = BAD_UTF8, f"byte {e.start}"
                yield rec
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rec.error, rec.detail = MALFORMED_JSON, e.msg
                yield rec
                continue
            yield _check(rec, obj, keys)


def _iter_parquet(path: str, keys) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`)") from e
    pf = pq.ParquetFile(path)
    missing = [k for k in keys if k not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: parquet file has no column {missing[0]!r}")
    row, size, nrows = 0, os.path.getsize(path), max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches(columns=list(keys)):
        cols = {k: batch.column(k).to_pylist() for k in keys}
        for i in range(batch.num_rows):
            row += 1
            yield _check(Record(path, row, pos=size * row // nrows), {k: cols[k][i] for k in keys}, keys)


def iter_records(paths: list[str], keys=("text",)) -> Iterator[Record]:
    """All records of all files, in input order."""
    for p in paths:
        yield from (_iter_parquet(p, keys) if p.endswith(".parquet") else _iter_jsonl(p, keys))


def input_bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)
