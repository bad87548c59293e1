"""The fast paths of tools/preprocess_data.py (issue 19) give what the plain paths give.

- Fast JSON parser (orjson / msgspec) vs the standard library: the same records, values, reasons
  and details line by line, and byte-identical datasets, counts and warnings end to end, on issue
  11's and 14's inputs (lone surrogates, BOM and UTF-16, CRLF and CR-only, invalid JSON and UTF-8,
  deep nesting, huge integers) and on generated lines.
- Blocks of lines cut by the main process (read_blocks) vs the line reader (readers): the same
  records with the same numbers, across block and read boundaries and a truncated .gz.
- The batch encoder vs one text at a time (Hugging Face's: tests/test_hf_tokenizer.py);
  ``add_documents`` vs ``add_document``.
- The worker pool: results in input order, results and tasks larger than a pipe's buffer, a task's
  or the input's error raised in its turn.
"""
import gzip
import importlib.util
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_th.data import preprocess, preprocess_worker, read_blocks, readers
from megatron_th.data.indexed import IndexedDatasetBuilder
from megatron_th.data.tokenizer import load_tokenizer
from megatron_th.data.worker_pool import WorkerPool

PARSERS = [name for name in ("orjson", "msgspec") if importlib.util.find_spec(name)]
needs_parser = pytest.mark.skipif(not PARSERS, reason="no fast JSON parser installed (the dev extra has orjson)")

j = lambda obj, **kw: json.dumps(obj, **kw).encode()  # noqa: E731
# one line per case; the stdlib path decides each, the fast path must agree
TRICKY = [
    j({"text": "สวัสดี plain", "id": 1, "meta": {"a": [1, 2.5, None, True]}}, ensure_ascii=False),
    b'{"text": "ab\\ud83dcd"}',                                   # lone surrogate escape (valid JSON)
    b'{"text": "ok", "\\udc00": 1}',                              # ... in another key
    j({"text": "pair \ud83d\ude00"}),                             # a surrogate pair: one emoji
    b"\xef\xbb\xbf" + j({"text": "bom at line start"}),
    b"\xef\xbb\xbf\xef\xbb\xbf" + j({"text": "two boms"}),
    j({"text": "crlf"}) + b"\r",
    b'{"text": "raw\ttab and \x01 control"}',                   # control characters: stdlib strict=False
    b'{"text": "broken',
    b'{"text": "x"} trailing',
    b'{"text": "caf\xe9"}',                                       # invalid UTF-8
    b'{"text": "\xed\xa0\xbd encoded surrogate"}',
    b'{"text": NaN}', b'{"text": "n", "v": Infinity}', b'{"text": "n", "v": 1e400}',
    b'{"text": "big", "n": 18446744073709551616}',               # orjson: a float; stdlib: an int
    b'{"text": 123456789012345678901234567890}',                 # non-string: detail names int
    b'{"text": "x", "n": ' + b"9" * 5000 + b"}",                 # int too long for the stdlib
    b'{"text": "deep", "v": ' + b"[" * 150 + b"]" * 150 + b"}",
    b'{"text": "deeper", "v": ' + b"[" * 250 + b"]" * 250 + b"}",
    b'{"text": "deepest", "v": ' + b"[" * 1020 + b"]" * 1020 + b"}",
    b"[" * 100000 + b"]" * 100000,
    b'{"text": "a", "text": "dup last wins", "b": 1, "b": 2}',
    j({"text": 5}), j({"text": None}), j({"text": ["x"]}), j({"body": "no key"}), j([1, 2]), j("str"),
    j({"text": ""}), j({"text": "   \n "}), j({"text": "\u200b\ufeff"}), j({"text": "x" * 3000}),
    b"", b"   ", b"\x0c", b"\t",
    j({"text": "t1", "title": "only title ok"}), j({"text": 1, "title": "t"}), j({"title": "t"}),
]


def _records(items):
    """Comparable form of parse_block's output (or of Records)."""
    out = []
    for it in items:
        if isinstance(it, tuple):
            line, values, obj = it
            out.append((line, False, None, "", values, {}, tuple(obj)))
        else:
            out.append((it.line, it.blank, it.error, it.detail, it.values, it.bad, tuple(it.keys_seen)))
    return out


@needs_parser
@pytest.mark.parametrize("parser", PARSERS or ["orjson"])
@pytest.mark.parametrize("keys", [("text",), ("text", "title")])
def test_fast_parser_records_equal_stdlib_records(parser, keys, monkeypatch):
    monkeypatch.setenv(read_blocks.JSON_PARSER_ENV, parser)
    name, loads = read_blocks.fast_json()
    assert name == parser and loads is not None
    blob = b"\n".join(TRICKY) + b"\n"
    fast = _records(read_blocks.parse_block("f", 1, blob, b"\n", keys, loads))
    slow = _records(read_blocks.parse_block("f", 1, blob, b"\n", keys, None))
    assert len(fast) == len(TRICKY)
    assert fast == slow
    # the fast parser was really used where it can be (else the comparison proves nothing)
    used = sum(isinstance(it, tuple) for it in read_blocks.parse_block("f", 1, blob, b"\n", keys, loads))
    assert used >= (4 if keys == ("text",) else 1)


_text = st.text(st.characters(blacklist_categories=()), max_size=30)
_value = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | _text,
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3), max_leaves=8)
_obj = st.dictionaries(st.sampled_from(["text", "title", "x", "\ud800"]) | _text, _value | _text, max_size=4)


@needs_parser
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(objs=st.lists(_obj | _value, max_size=6), ascii_only=st.booleans(), crlf=st.booleans(),
       keys=st.sampled_from([("text",), ("text", "title")]))
def test_property_fast_parser_agrees_with_stdlib(objs, ascii_only, crlf, keys):
    lines = [json.dumps(o, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") for o in objs]
    blob = b"".join(x + (b"\r\n" if crlf else b"\n") for x in lines)
    slow = _records(read_blocks.parse_block("g", 7, blob, b"\n", keys, None))
    for parser in PARSERS:
        os.environ[read_blocks.JSON_PARSER_ENV] = parser
        try:
            loads = read_blocks.fast_json()[1]
        finally:
            del os.environ[read_blocks.JSON_PARSER_ENV]
        assert _records(read_blocks.parse_block("g", 7, blob, b"\n", keys, loads)) == slow


def _quirky_inputs(d):
    """Files with issue 11's / 14's quirks (the UTF-16 one takes the records path)."""
    files = {
        "a.jsonl": b"\n".join(TRICKY[:20]) + b"\r\n\r\n" + b"\n".join(TRICKY[20:]),
        "bom_crlf.jsonl": b"\xef\xbb\xbf" + j({"text": "one"}) + b"\r\n" + j({"text": "สอง"}, ensure_ascii=False)
                          + b"\r\n\xef\xbb\xbf" + j({"text": "three"}) + b"\r\n",
        "utf16.jsonl": (json.dumps({"text": "สี่"}, ensure_ascii=False) + "\r\n" + json.dumps({"text": "five"})
                        + "\n").encode("utf-16"),
        "cr_only.jsonl": j({"text": "seven"}) + b"\r" + j({"text": "eight"}) + b"\r",
        "b.jsonl.gz": gzip.compress(b"\n".join(TRICKY) + b"\n"),
    }
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return [os.path.join(d, n) for n in files]


def _run(paths, prefix, keys, monkeypatch, parser, extra=()):
    monkeypatch.setenv(read_blocks.JSON_PARSER_ENV, parser)
    logs = []
    args = preprocess.build_parser().parse_args(
        ["--input", *paths, "--tokenizer-model", TOKENIZER, "--output-prefix", prefix, "--json-keys", *keys,
         "--append-eod", "--show-errors", "1000", "--quiet", *extra])
    s = preprocess.run(args, log=logs.append)
    s.pop("seconds")
    data = {k: [open(f"{prefix}_{k}_document.{e}", "rb").read() for e in ("bin", "idx")] for k in keys}
    return s, [line for line in logs if not line.startswith(("done:", "wrote "))], data


TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "megatron_th", "assets", "tokenizer", "th_en.model")


@needs_parser
@pytest.mark.parametrize("keys", [("text",), ("text", "title")])
def test_datasets_counts_and_warnings_identical_with_and_without_fast_parser(tmp_path, monkeypatch, keys):
    paths = _quirky_inputs(tmp_path)
    ref = _run(paths, str(tmp_path / "std"), keys, monkeypatch, "stdlib")
    s = ref[0]
    assert s["skipped_lone_surrogate"] >= 2 and s["skipped_malformed_json"] >= 8 and s["skipped_invalid_utf8"] >= 2
    assert s["blank_lines"] >= 6 and s["records_written"] >= 10
    for parser in PARSERS:
        for chunk in ("3", "64"):
            got = _run(paths, str(tmp_path / f"{parser}{chunk}"), keys, monkeypatch, parser, ["--chunk-size", chunk])
            assert got == ref, (parser, chunk)


def _lines_of_tasks(tasks):
    recs = []
    for kind, path, payload, pos in tasks:
        items = read_blocks.parse_block(path, *payload, ("text",), None) if kind == "lines" else payload
        recs += [(path, *r) for r in _records(items)]
    return recs


@pytest.mark.parametrize("max_lines", [1, 2, 5, 1000])
def test_blocks_hold_the_line_readers_records(tmp_path, monkeypatch, max_lines):
    monkeypatch.setattr(readers, "_BLOCK", 7)  # reads end inside lines, inside CRLF pairs, inside BOMs
    body = (b"\n".join(TRICKY[:8] + [b"", j({"text": "y" * 40})]) + b"\r\n\n" + j({"text": "last, no newline"}))
    good = gzip.compress(body)
    files = {"plain.jsonl": body, "cr.jsonl": b"\r".join(TRICKY[:4]), "good.jsonl.gz": good,
             "cut.jsonl.gz": good[:len(good) * 2 // 3], "empty.jsonl": b"", "nl.jsonl": b"\n\n"}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    expect = [(r.path, *_records([r])[0]) for r in readers.iter_records(paths, ("text",))]
    got = _lines_of_tasks(read_blocks.iter_tasks(paths, ("text",), max_lines))
    assert got == expect
    assert any(r[3] == readers.UNREADABLE_FILE for r in got)  # the cut .gz: its readable lines, then the error


def test_batch_encoder_equals_one_text_at_a_time():
    tok = load_tokenizer(TOKENIZER)
    texts = ["สวัสดีครับ", "", " ", "\u200b", "ก\u200bข\ufeffค", "\ufeffx", "Hello, world", "x" * 5000, "\n\t",
             "___", "…", "๑๒๓", "emoji 🙂"]
    got = preprocess_worker.encode_values(tok, texts)
    for t, g in zip(texts, got):
        if isinstance(g, np.ndarray):
            assert g.tolist() == tok.encode(t), t
        else:
            assert g == ("empty_text", "") and (not tok.encode(t) or not tok.normalize(t).strip()), t
    # an encode replaced on the object (a wrapper) is what runs, text by text
    tok.encode = lambda t: (_ for _ in ()).throw(RuntimeError("no")) if t == "x" else [7]
    got = preprocess_worker.encode_values(tok, ["a", "x"])
    assert [v if isinstance(v, tuple) else v.tolist() for v in got] == [[7], ("tokenizer_error", "RuntimeError: no")]


def test_add_documents_writes_what_add_document_writes(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 8000, size=n) for n in (5, 0, 300, 1, 17)]
    with IndexedDatasetBuilder(tmp_path / "one", np.uint16) as b:
        for d in docs + docs[:2]:
            b.add_document(d)
    with IndexedDatasetBuilder(tmp_path / "many", np.uint16) as b:
        b.add_document(docs[0])
        b.add_documents(np.concatenate(docs[1:]).astype(np.uint16), [len(d) for d in docs[1:]])
        b.add_documents(np.zeros(0, np.uint16), [])
        b.add_documents(np.concatenate(docs[:2]), [len(d) for d in docs[:2]])  # int64: range-checked
    for ext in ("bin", "idx"):
        assert (tmp_path / f"one.{ext}").read_bytes() == (tmp_path / f"many.{ext}").read_bytes()
    with IndexedDatasetBuilder(tmp_path / "bad", np.uint16) as b:
        with pytest.raises(ValueError, match="out of range"):
            b.add_documents(np.array([70000]), [1])
        with pytest.raises(ValueError, match="lengths sum"):
            b.add_documents(np.array([1, 2]), [1])


def test_worker_pool_order_big_messages_and_errors():
    # builtins only, so the spawned workers import nothing but the pool module
    sizes = [3_000_000, 10, 2_500_000, 0, 7, 1_000_000, 1, 2, 3, 4, 5]
    with WorkerPool(2, len, (), window=3) as pool:
        got = []
        with pytest.raises(ValueError, match="negative count"):
            for out in pool.imap(bytes, sizes + [-1] + sizes):  # results of MBs: no deadlock
                got.append(len(out))
        assert got == sizes
        with pytest.raises(RuntimeError, match="once per pool"):
            next(pool.imap(len, [b"x"]))

    def tasks():
        yield b"x" * 5_000_000  # a task larger than the pipe's buffer
        yield b"yz"
        raise OSError("input broke")

    with WorkerPool(1, len, ()) as pool:
        got = []
        with pytest.raises(OSError, match="input broke"):
            for out in pool.imap(len, tasks()):
                got.append(out)
        assert got == [5_000_000, 2]
