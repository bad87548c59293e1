"""The records of readers.py in blocks, for tools/preprocess_data.py's worker processes.

``iter_tasks`` (in the main process) hands UTF-8 jsonl files to the workers as raw blocks of whole
lines, found exactly as ``readers`` finds them (same reads, same line numbers, the same partial
line lost when a compressed file breaks); ``parse_block`` (in a worker) turns a block into
records. Parquet and UTF-16/32 files travel as ``readers.Record`` lists instead.

A line is first given to a fast JSON parser when one is installed (orjson, else msgspec; the
environment variable ``MEGATRON_TH_JSON`` = ``orjson``/``msgspec``/``stdlib``/``auto`` chooses),
and its object is used only where the standard library reads the same record from that line: an
object whose every requested key holds a string, nested less than 200 levels deep (deeper, the
stdlib may hit its recursion limit and call the line malformed). Only its keys and those strings
are used, so values the parsers read differently (orjson reads an integer beyond 64 bits as a
float) do not matter. Every other line, including each one the fast parser refuses
(lone surrogates, raw control characters, NaN, a BOM, invalid UTF-8, blank or malformed lines),
takes the standard-library path of ``readers.parse_line``, so records, reasons and details are the
same with or without a fast parser (tests/test_preprocess_speed_paths.py compares them).
"""
from __future__ import annotations

import os
import zlib
from typing import Callable, Iterator

from megatron_th.data import readers
from megatron_th.data.readers import Record, _iter_jsonl, _iter_parquet, _read_head, _stream, _unreadable, parse_line

JSON_PARSER_ENV = "MEGATRON_TH_JSON"
_MAX_DEPTH = 200  # well inside the stdlib's recursion limit; a deeper line goes the stdlib way


def fast_json() -> tuple[str, Callable | None]:
    """(name, ``loads(bytes)``) of the fast JSON parser to try first on UTF-8 lines, chosen by
    ``MEGATRON_TH_JSON``: ``orjson``, ``msgspec``, ``stdlib`` (no fast parser: loads is None), or
    ``auto``/unset (orjson, else msgspec, else none). Raises ValueError for another value and
    ImportError when the parser it names is not installed."""
    choice = os.environ.get(JSON_PARSER_ENV, "auto") or "auto"
    if choice not in ("auto", "orjson", "msgspec", "stdlib"):
        raise ValueError(f"{JSON_PARSER_ENV}={choice}: use auto, orjson, msgspec or stdlib")
    for name in ("orjson", "msgspec") if choice == "auto" else (choice,):
        try:
            if name == "orjson":
                import orjson
                return name, orjson.loads
            if name == "msgspec":
                import msgspec
                return name, msgspec.json.Decoder().decode
        except ImportError:
            if choice != "auto":
                raise ImportError(f"{JSON_PARSER_ENV}={name}: {name} is not installed (`pip install {name}`)") from None
    return "stdlib", None


def _shallow(v, depth: int) -> bool:
    """No list or dict in ``v`` (a list or dict at ``depth``) is nested deeper than _MAX_DEPTH."""
    if depth > _MAX_DEPTH:
        return False
    for x in v.values() if type(v) is dict else v:
        if (type(x) is dict or type(x) is list) and not _shallow(x, depth + 1):
            return False
    return True


def _fast_values(obj: dict, keys) -> dict | None:
    """{key: text} of a fast parser's object when every key holds a string and no value is nested
    deeper than _MAX_DEPTH; otherwise None (the line then takes the stdlib path). Only the keys and
    these strings are used, so other values may differ from the stdlib's (orjson reads an integer
    beyond 64 bits as a float)."""
    values = {}
    for k in keys:
        v = obj.get(k)
        if type(v) is not str:
            return None
        values[k] = v
    return values if _shallow(obj, 1) else None


def parse_block(path: str, first: int, blob: bytes, nl: bytes, keys, loads) -> Iterator:
    """The lines of a UTF-8 "lines" task (``iter_tasks``), numbered from ``first``: for each, either
    ``(line, {key: text}, object)`` (the fast parser's object, see the module docstring) or the
    ``Record`` of the stdlib path (``parse_line``; blank lines included). ``loads``: ``fast_json()[1]``."""
    lines = blob.split(nl)
    if blob.endswith(nl):
        lines.pop()
    n = first
    for raw in lines:
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        if loads is not None:
            try:
                obj = loads(raw)
            except Exception:  # whatever it refuses, the stdlib decides (and names the reason)
                obj = None
            if type(obj) is dict:
                values = _fast_values(obj, keys)
                if values is not None:
                    yield n, values, obj
                    n += 1
                    continue
        yield parse_line(Record(path, n), raw, "utf-8", keys)
        n += 1


def _split_blocks(f, head: bytes, nl: bytes, start: int, max_lines: int) -> Iterator[tuple[bytes, int, int]]:
    """(bytes of up to ``max_lines`` whole lines, their count, stream offset after them) for a file
    with a one-byte line terminator ``nl``: ``_split``'s lines, cut into blocks. The file is read in
    the same ``readers._BLOCK`` reads, and a read that fails loses the same partial line (the lines before
    it are yielded first), so the records and their numbers are ``_split``'s."""
    buf, pos, base = head, 0, start
    count, end = 0, 0  # whole lines found in buf[pos:end]
    while True:
        while count < max_lines:
            j = buf.find(nl, end)
            if j == -1:
                break
            count, end = count + 1, j + 1
        if count == max_lines:
            yield buf[pos:end], count, base + end
            pos, count = end, 0
            continue
        try:
            block = f.read(readers._BLOCK)
        except (EOFError, OSError, zlib.error):
            if count:
                yield buf[pos:end], count, base + end
            raise
        if not block:
            if pos < len(buf):
                yield buf[pos:], count + (end < len(buf)), base + len(buf)
            return
        base += pos
        buf, end, pos = buf[pos:] + block, end - pos, 0


def _record_tasks(path: str, records: Iterator[Record], max_lines: int, start: int) -> Iterator[tuple]:
    batch: list[Record] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == max_lines:
            yield "records", path, batch, start + rec.pos
            batch = []
    if batch:
        yield "records", path, batch, start + batch[-1].pos


def _jsonl_tasks(path: str, keys, max_lines: int, start: int) -> Iterator[tuple]:
    with open(path, "rb") as raw_f:
        f, n = _stream(raw_f, path), 0
        try:
            head, codec, unit, bom, nl, cr = _read_head(f)
            if codec != "utf-8":  # UTF-16/32 files: read line by line here (rare)
                yield from _record_tasks(path, _iter_jsonl(path, keys), max_lines, start)
                return
            for blob, count, end in _split_blocks(f, head, nl, bom, max_lines):
                yield "lines", path, (n + 1, blob, nl), start + (end if f is raw_f else raw_f.tell())
                n += count
        except (EOFError, OSError, zlib.error) as e:
            yield "records", path, [_unreadable(path, n + 1, e)], start + os.path.getsize(path)
        finally:
            if f is not raw_f:
                f.close()


def iter_tasks(paths: list[str], keys, max_lines: int) -> Iterator[tuple]:
    """The input of ``paths`` in order, as work for tools/preprocess_data.py's workers: tuples
    ``("lines", path, (first line number, bytes of whole UTF-8 lines, terminator), pos)`` (read
    by ``parse_block`` where the worker runs) or ``("records", path, [Record, ...], pos)`` (parquet,
    UTF-16/32, an unreadable rest of a file), each of at most ``max_lines`` lines or records
    (blank lines included); ``pos`` is the bytes of all inputs consumed after the task."""
    if max_lines < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {max_lines}")
    start = 0
    for p in paths:
        if p.endswith(".parquet"):
            yield from _record_tasks(p, _iter_parquet(p, keys), max_lines, start)
        else:
            yield from _jsonl_tasks(p, keys, max_lines, start)
        start += os.path.getsize(p)
