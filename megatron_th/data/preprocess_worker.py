"""The worker half of tools/preprocess_data.py: one task of input -> what the main process appends.

A task (``read_blocks.iter_tasks``: a block of raw UTF-8 lines, or a list of records) is parsed
here (``read_blocks.parse_block``), all its texts are encoded in one batch call of the tokenizer
(sentencepiece's ``encode(list, out_type="numpy")``, which runs in C++ without the GIL and returns
buffers, not Python ints; Hugging Face's fast tokenizers' ``encode_batch``), and the records are
decided in input order exactly as megatron_th/data/preprocess.py documents (a record is skipped
only when no key has text; otherwise every key gets a document, empty for a bad or empty value).
The result holds, per dataset key, one token buffer of the dataset's dtype (EOD appended per
document with ``append_eod``) and the document lengths, plus the summary counts, the keys the
records had and the bad records as ``(where, reason, detail, action, count)`` events, which the
main process reports (and, with --strict, raises) in order. Nothing per document crosses the
process boundary as a Python object.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from megatron_th.data import read_blocks

EMPTY = "empty_text"
TOKENIZER_ERROR = "tokenizer_error"

# a letter or digit (str.isalnum: re's \w is isalnum or "_"); a normalizer never turns one into
# nothing, so only a text without one near its start can be blank once normalized
_ALNUM = re.compile(r"[^\W_]")
_NO_TOKENS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Options:
    """What a worker needs besides the tokenizer: the dataset keys (in order), whether to append
    ``eod`` after each document, and the datasets' token dtype (a numpy dtype string)."""
    keys: tuple
    append_eod: bool
    eod: int
    dtype: str


def _detail(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:80]}"


def _batch_encoder(tok):
    """The tokenizer's ``encode_arrays``, or None when texts must go one by one through ``encode``
    (a tokenizer without a batch encoder, or one whose ``encode`` was replaced on the object)."""
    if "encode" in getattr(tok, "__dict__", {}):
        return None
    return getattr(tok, "encode_arrays", None)


def encode_values(tok, texts: list[str], num_threads: int = 1) -> list:
    """Per text: its ids (a 1-D integer array; exactly ``tok.encode(text)``, nothing prepended), or
    ``(reason, detail)``: ``empty_text`` when the text is blank once the tokenizer's normalizer has
    run (checked only for texts with no letter or digit in their first 256 characters) or encodes to
    nothing, ``tokenizer_error`` when the tokenizer raises for it (detail: the exception). All texts
    are encoded in one batch; when the batch raises, text by text to find the ones that fail."""
    out: list = [None] * len(texts)
    todo = []
    for i, t in enumerate(texts):
        if _ALNUM.search(t, 0, 256) is None:
            try:
                if not tok.normalize(t).strip():
                    out[i] = (EMPTY, "")
                    continue
            except Exception as e:  # whatever the tokenizer library raises for this one text
                out[i] = (TOKENIZER_ERROR, _detail(e))
                continue
        todo.append(i)
    arrays = None
    batch = _batch_encoder(tok)
    if batch is not None and todo:
        try:
            arrays = batch([texts[i] for i in todo], num_threads)
        except Exception:
            arrays = None
    for j, i in enumerate(todo):
        if arrays is not None:
            ids = arrays[j]
        else:
            try:
                ids = np.asarray(tok.encode(texts[i]), dtype=np.int64)
            except Exception as e:
                out[i] = (TOKENIZER_ERROR, _detail(e))
                continue
        out[i] = ids if len(ids) else (EMPTY, "")
    return out


def run_task(tok, opts: Options, loads, task: tuple) -> dict:
    """One task -> ``{"pos", "counts", "keys", "events", "tokens", "lengths"}`` (see the module
    docstring): ``tokens[k]`` a 1-D array of ``opts.dtype``, ``lengths[k]`` int64 document lengths
    (EOD included), ``keys`` {key: records having it} in first-seen order. ``loads``: the fast
    JSON parser or None (``read_blocks.fast_json``). Raises ValueError when an id does not fit
    the dtype."""
    kind, path, payload, pos = task
    keys = opts.keys
    counts: Counter = Counter()
    seen: dict = {}
    entries = []  # (path, line, {key: text} or None, {key or "*": (reason, detail)} or None)
    items = read_blocks.parse_block(path, *payload, keys, loads) if kind == "lines" else payload
    for it in items:
        if type(it) is tuple:  # the fast parser's record: every key holds text
            line, values, obj = it
            for k in obj:
                seen[k] = seen.get(k, 0) + 1
            entries.append((path, line, values, None))
            continue
        if it.blank:
            counts["blank_lines"] += 1
            continue
        for k in it.keys_seen:
            seen[k] = seen.get(k, 0) + 1
        if it.error:
            entries.append((it.path, it.line, None, {"*": (it.error, it.detail)}))
        else:
            entries.append((it.path, it.line, it.values, it.bad))
    texts = [v[k] for _, _, v, _ in entries if v for k in keys if k in v]
    encoded = iter(encode_values(tok, texts))
    events = []
    parts = {k: [] for k in keys}
    lengths = {k: [] for k in keys}
    eod = np.array([opts.eod], dtype=np.int64) if opts.append_eod else None
    for p, line, values, bad in entries:
        if bad and "*" in bad:
            events.append((f"{p}:{line}", *bad["*"], "skipped", True))
            continue
        res = {k: next(encoded) if values and k in values else bad[k] for k in keys}
        if not any(type(v) is not tuple for v in res.values()):
            events.append((f"{p}:{line}", *res[keys[0]], "skipped", True))
            continue
        counts["records_written"] += 1
        for k in keys:
            ids = res[k]
            if type(ids) is tuple:
                reason, detail = ids
                counts[f"empty_value_{k}"] += 1
                if reason != EMPTY:
                    events.append((f"{p}:{line}", reason, detail, f"written as an empty {k!r} document", False))
                ids = _NO_TOKENS
            parts[k].append(ids)
            if eod is not None:
                parts[k].append(eod)
            lengths[k].append(len(ids) + (eod is not None))
    dtype = np.dtype(opts.dtype)
    tokens = {}
    for k in keys:
        buf = np.concatenate(parts[k]) if parts[k] else _NO_TOKENS
        if buf.size and dtype.kind in "ui":
            info = np.iinfo(dtype)
            if buf.min() < info.min or buf.max() > info.max:
                raise ValueError(f"{path}: token id out of range for {dtype}")
        tokens[k] = buf.astype(dtype)
        counts["tokens"] += int(buf.size)
        counts[f"docs_written_{k}"] += len(lengths[k])
    counts["docs_read"] = len(entries)
    return {"pos": pos, "counts": {k: v for k, v in counts.items() if v}, "keys": seen, "events": events,
            "tokens": tokens,
            "lengths": {k: np.asarray(v, dtype=np.int64) for k, v in lengths.items()}}
