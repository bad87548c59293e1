"""Input records for the data tools: jsonl, jsonl.gz and parquet, with per-record errors.

Every record carries where it came from (file and line, or parquet row) so that bad input can be
reported as ``file:line: reason`` and counted, never silently dropped, and never fatal to the run
(only ``--strict`` makes the first bad record an error).

Byte-level quirks that still allow reading the text correctly are absorbed, not rejected:
a byte-order mark (at the start of the file or of any line, e.g. after ``cat``), UTF-16 and UTF-32
files (detected as RFC 8259 / ``json.detect_encoding`` does: by BOM or by the pattern of zero
bytes), CRLF and CR-only line endings, and raw control characters inside JSON strings (read with
``json.loads(strict=False)``). Lines are numbered by the file's line terminator (``\\n``, or ``\\r``
for a file without any ``\\n``), as an editor shows them. What cannot be read correctly is a
rejected record with one of ``REASONS``: a line that is not valid in the file's encoding, a value
with a lone UTF-16 surrogate (valid JSON, ``"\\ud83d"``, but not Unicode text: no tokenizer or
UTF-8 file can hold it), malformed JSON, a non-object, a missing key or a non-string value.
Blank lines are not records (``Record.blank``). With ``keys=None`` a record keeps the whole decoded
object in ``Record.obj`` instead (chat records, whose values are lists of messages), and only a
non-object is rejected here; the caller checks the shape.

tools/preprocess_data.py reads the same records in blocks, parsed where its workers run
(megatron_th/data/read_blocks.py).
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

# Reasons a record (or one key's value) is rejected: the keys of the summary counters.
MALFORMED_JSON = "malformed_json"
NOT_OBJECT = "not_an_object"
MISSING_KEY = "missing_key"
NOT_STRING = "non_string_value"
BAD_UTF8 = "invalid_utf8"
BAD_ENCODING = "invalid_encoding"       # a UTF-16/UTF-32 file's line that does not decode
LONE_SURROGATE = "lone_surrogate"
UNREADABLE_FILE = "unreadable_file"     # e.g. a truncated .gz: the rest of that file is lost
REASONS = (MALFORMED_JSON, NOT_OBJECT, MISSING_KEY, NOT_STRING, BAD_UTF8, BAD_ENCODING, LONE_SURROGATE,
           UNREADABLE_FILE)

_SURROGATE = re.compile("[\ud800-\udfff]")
_DECODER = json.JSONDecoder(strict=False)
_BLOCK = 1 << 20


@dataclass
class Record:
    """One input line (or parquet row).

    ``error``/``detail``: the whole record is unreadable (one of ``REASONS``). Otherwise
    ``values`` holds each readable key's text and ``bad`` maps each unreadable key to
    ``(reason, detail)``; ``keys_seen`` are the object's keys (for "wrong --json-keys" errors).
    ``obj``: the decoded object itself when the records were read with ``keys=None``."""
    path: str
    line: int                    # 1-based line (jsonl) or row (parquet)
    values: dict = field(default_factory=dict)
    bad: dict = field(default_factory=dict)
    error: str | None = None
    detail: str = ""
    pos: int = 0                 # bytes of this (possibly compressed) file consumed so far
    blank: bool = False
    keys_seen: tuple = ()
    obj: object = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def texts(self) -> dict | None:
        """All keys' texts when every key is readable, else None."""
        return None if self.error or self.blank or self.bad else self.values


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


def _check(rec: Record, obj, keys, surrogates_possible: bool = True) -> Record:
    if not isinstance(obj, dict):
        rec.error, rec.detail = NOT_OBJECT, type(obj).__name__
        return rec
    rec.keys_seen = tuple(obj)
    if keys is None:
        rec.obj = obj
        return rec
    for k in keys:
        if k not in obj:
            rec.bad[k] = (MISSING_KEY, k)
        elif not isinstance(obj[k], str):
            rec.bad[k] = (NOT_STRING, f"{k} is {type(obj[k]).__name__}")
        elif surrogates_possible and (m := _SURROGATE.search(obj[k])) is not None:
            rec.bad[k] = (LONE_SURROGATE, f"{k}: U+{ord(m.group()):04X} at character {m.start()}")
        else:
            rec.values[k] = obj[k]
    return rec


def _codec(head: bytes) -> tuple[str, int, int]:
    """(codec, code-unit bytes, BOM bytes) of a JSON text starting with ``head``."""
    enc = json.detect_encoding(head)
    if enc == "utf-8-sig":
        return "utf-8", 1, 3
    if enc in ("utf-16", "utf-32"):
        unit = 2 if enc == "utf-16" else 4
        return enc + ("-le" if head[:2] == b"\xff\xfe" else "-be"), unit, unit
    return enc, (2 if "16" in enc else 4 if "32" in enc else 1), 0


def _split(f, head: bytes, newline: bytes, unit: int, start: int = 0) -> Iterator[tuple[bytes, int]]:
    """(line, stream offset just after it) for the lines of ``f`` (``head`` already read, starting
    at stream offset ``start``) ending at ``newline`` aligned to ``unit`` bytes. The offset is
    exact, so progress can be reported per line although the file is read in 1 MiB blocks."""
    buf, pos, search, base = head, 0, 0, start
    while True:
        i = buf.find(newline, search)
        while i != -1 and i % unit:
            i = buf.find(newline, i + 1)
        if i != -1:
            yield buf[pos:i], base + i + len(newline)
            pos = search = i + len(newline)
            continue
        block = f.read(_BLOCK)
        if not block:
            if pos < len(buf):
                yield buf[pos:], base + len(buf)
            return
        base += pos
        buf = buf[pos:]
        pos, search = 0, max(0, len(buf) - len(newline) + 1)
        search -= search % unit
        buf += block


def parse_line(rec: Record, raw: bytes, codec: str, keys) -> Record:
    """Fills ``rec`` from one line's bytes ``raw`` (its terminator and a CR before it removed) in
    ``codec``: blank, an error with its reason, or the checked object (``_check``)."""
    try:
        line = raw.decode(codec)
    except UnicodeDecodeError as e:
        rec.error = BAD_UTF8 if codec == "utf-8" else BAD_ENCODING
        rec.detail = f"{codec}, byte {e.start}: {e.reason}"
        return rec
    while line.startswith("\ufeff"):
        line = line[1:]
    if not line or line.isspace():
        rec.blank = True
        return rec
    try:
        obj = _DECODER.decode(line)
    except json.JSONDecodeError as e:
        rec.error, rec.detail = MALFORMED_JSON, e.msg
        return rec
    except (ValueError, RecursionError) as e:   # e.g. an integer of > 4300 digits
        rec.error = MALFORMED_JSON
        rec.detail = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0][:100]
        return rec
    # decoding was strict: a surrogate can only come from a JSON escape "\ud83d"
    return _check(rec, obj, keys, "\\u" in line)


def _stream(raw_f, path: str):
    return gzip.open(raw_f) if path.endswith(".gz") else raw_f


def _read_head(f):
    """(first block after any BOM, codec, code-unit bytes, BOM bytes, line terminator, CR) of ``f``."""
    head = f.read(_BLOCK)
    codec, unit, bom = _codec(head[:4])
    head = head[bom:]
    nl = "\n".encode(codec)
    if nl not in head and "\r".encode(codec) in head:   # old Mac line endings
        nl = "\r".encode(codec)
    return head, codec, unit, bom, nl, "\r".encode(codec)


def _unreadable(path: str, line: int, e: BaseException) -> Record:
    return Record(path, line, error=UNREADABLE_FILE, detail=f"{type(e).__name__}: {e}"[:120], pos=os.path.getsize(path))


def _iter_jsonl(path: str, keys) -> Iterator[Record]:
    with open(path, "rb") as raw_f:
        f, n = _stream(raw_f, path), 0
        try:
            head, codec, unit, bom, nl, cr = _read_head(f)
            for raw, end in _split(f, head, nl, unit, bom):
                n += 1  # position: exact for plain files; the compressed position for .gz
                rec = Record(path, n, pos=end if f is raw_f else raw_f.tell())
                if raw.endswith(cr) and len(raw) % unit == 0:
                    raw = raw[:-len(cr)]
                yield parse_line(rec, raw, codec, keys)
        except (EOFError, OSError, zlib.error) as e:
            yield _unreadable(path, n + 1, e)
        finally:
            if f is not raw_f:
                f.close()


def _iter_parquet(path: str, keys) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`)") from e
    pf = pq.ParquetFile(path)
    names = tuple(pf.schema_arrow.names)
    if keys is None:
        yield from _parquet_objects(path, pf, names)
        return
    present = [k for k in keys if k in names]
    row, size, nrows = 0, os.path.getsize(path), max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches(columns=present) if present else ():
        cols = {k: batch.column(k).to_pylist() for k in present}
        for i in range(batch.num_rows):
            row += 1
            rec = _check(Record(path, row, pos=size * row // nrows), {k: cols[k][i] for k in present}, keys,
                         False)  # arrow strings are valid UTF-8
            rec.keys_seen = names
            yield rec
    if not present:  # every row lacks every key: still one record per row, counted
        for row in range(1, pf.metadata.num_rows + 1):
            yield Record(path, row, bad={k: (MISSING_KEY, k) for k in keys}, keys_seen=names,
                         pos=size * row // nrows)


def _parquet_objects(path: str, pf, names: tuple) -> Iterator[Record]:
    """Every row as a whole object (``keys=None``): nested columns (a list of structs) become lists
    of dicts, as ``pyarrow.RecordBatch.to_pylist`` gives them."""
    row, size, nrows = 0, os.path.getsize(path), max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches():
        for obj in batch.to_pylist():
            row += 1
            yield _check(Record(path, row, pos=size * row // nrows), obj, None)


def iter_records(paths: list[str], keys=("text",)) -> Iterator[Record]:
    """All records of all files, in input order (blank lines included, marked ``blank``).
    ``keys=None``: each record's whole object in ``Record.obj`` (see the module docstring)."""
    for p in paths:
        yield from (_iter_parquet(p, keys) if p.endswith(".parquet") else _iter_jsonl(p, keys))


def input_bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


class BadRecord(ValueError):
    """``--strict``: the first bad record, as ``file:line: reason (detail)``."""


class Rejects:
    """Counts bad records by reason into ``counter[prefix + reason]``, logs the first ``show`` as
    ``warning: file:line: reason (detail); <action>``, and raises ``BadRecord`` when ``strict``.
    Also tallies the keys of the objects read, for the "wrong --json-keys" error."""

    def __init__(self, counter: Counter, strict: bool, show: int, log: Callable[[str], None],
                 prefix: str = "skipped_"):
        self.counter, self.strict, self.show, self.log, self.prefix = counter, strict, show, log, prefix
        self.shown = 0
        self.keys_seen: Counter = Counter()

    def seen(self, rec: Record) -> None:
        for k in rec.keys_seen:
            if k in self.keys_seen or len(self.keys_seen) < 1000:
                self.keys_seen[k] += 1

    def seen_counts(self, counts: dict) -> None:
        """``seen`` for many records at once: ``counts`` maps each key to its number of records, in
        the order the keys first appeared (the same tally as ``seen`` record by record)."""
        for k, c in counts.items():
            if k in self.keys_seen or len(self.keys_seen) < 1000:
                self.keys_seen[k] += c

    def add(self, where: str, reason: str, detail: str = "", action: str = "skipped", count: bool = True):
        if count:
            self.counter[self.prefix + reason] += 1
        msg = f"{where}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise BadRecord(msg)
        if self.shown < self.show:
            self.log(f"warning: {msg}; {action}")
            self.shown += 1

    def describe_keys(self, limit: int = 5) -> str:
        common = self.keys_seen.most_common()
        s = ", ".join(f"{k} ({n} record{'s' * (n != 1)})" for k, n in common[:limit])
        return s + (f" and {len(common) - limit} more" if len(common) > limit else "") if s else "none"
