"""Issue 14, kinds 1-3 (preprocessing half): what tools/preprocess_data.py and
tools/train_tokenizer.py do with bad input. Every bad record is counted by reason with file:line and
skipped (``--strict``: one ``error:`` line), byte-level quirks that can be read correctly are read,
multi-key outputs stay aligned, and a run that writes nothing is one error naming the keys seen."""
import json
import os
import tempfile
from argparse import Namespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_th.data import preprocess, train_tokenizer
from megatron_th.data.indexed import IndexedDataset
from megatron_th.data.tokenizer import load_tokenizer


def _run(argv):
    logs = []
    summary = preprocess.run(preprocess.build_parser().parse_args(argv + ["--quiet"]), log=logs.append)
    return summary, logs


def _docs(prefix, key, tok):
    ds = IndexedDataset(f"{prefix}_{key}_document")
    return [tok.decode(ds[i]) for i in range(len(ds))], [len(ds[i]) for i in range(len(ds))]


def _quirky_files(d):
    """(path, bytes) files with every byte-level quirk, and the texts a correct reader keeps."""
    j = lambda t, **kw: json.dumps({"text": t}, **kw).encode()  # noqa: E731
    files = {
        # UTF-8 BOM at the start, CRLF endings, a BOM again mid-file (files joined with `cat`),
        # a raw tab and a raw CR inside a string (invalid strict JSON, unambiguous text)
        "bom_crlf.jsonl": b"\xef\xbb\xbf" + j("one") + b"\r\n" + j("two", ensure_ascii=False) + b"\r\n"
                          + b"\xef\xbb\xbf" + j("three") + b"\r\n" + b'{"text": "t\tab\rcr"}\r\n\r\n',
        "utf16.jsonl": (json.dumps({"text": "สี่"}, ensure_ascii=False) + "\r\n"
                        + json.dumps({"text": "five"}) + "\n").encode("utf-16"),
        "utf16be_nobom.jsonl": (json.dumps({"text": "six"}) + "\n").encode("utf-16-be"),
        "cr_only.jsonl": j("seven") + b"\r" + j("eight") + b"\r",
        "bad.jsonl": b"\n".join([
            b'{"text": "ab\\ud83dcd"}',                    # 1 lone surrogate (valid JSON)
            j("\u200b\ufeff"),                              # 2 empty once the tokenizer normalizes
            b'{"text": "caf\xe9"}',                         # 3 latin-1 byte in a UTF-8 file
            b'{"text": "x", "n": ' + b"9" * 5000 + b"}",    # 4 int too long for Python's json
            b"[" * 100000 + b"]" * 100000,                  # 5 nested beyond the recursion limit
            j("nine"),                                      # 6 ok
            j("pair \ud83d\ude00"),                         # 7 a surrogate *pair*: one emoji, ok
        ]) + b"\n",
    }
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    kept = ["one", "two", "three", "t\tab\rcr", "สี่", "five", "six", "seven", "eight", "nine", "pair \U0001F600"]
    return [os.path.join(d, n) for n in files], kept


def test_untokenizable_empty_and_byte_quirk_records_counted_and_skipped(tmp_path, tokenizer_model):
    paths, kept = _quirky_files(tmp_path)
    s, logs = _run(["--input", *paths, "--tokenizer-model", tokenizer_model, "--output-prefix",
                    str(tmp_path / "o"), "--append-eod", "--show-errors", "10"])
    tok = load_tokenizer(tokenizer_model)
    texts, lens = _docs(tmp_path / "o", "text", tok)
    assert texts == [t + tok.decode([tok.eod]) for t in kept]
    bad = str(tmp_path / "bad.jsonl")
    assert s["skipped_lone_surrogate"] == 1 and s["skipped_empty_text"] == 1
    assert s["skipped_invalid_utf8"] == 1 and s["skipped_malformed_json"] == 2
    assert s["docs_read"] == len(kept) + 5 and s["blank_lines"] == 1
    warnings = [line for line in logs if line.startswith("warning")]
    assert warnings[0].startswith(f"warning: {bad}:1: lone surrogate (text: U+D83D at character 2)")
    assert warnings[1].startswith(f"warning: {bad}:2: empty text")
    assert [w.split(": ")[1] for w in warnings] == [f"{bad}:{n}" for n in (1, 2, 3, 4, 5)]


def test_tokenizer_failure_is_a_counted_skip_and_strict_is_one_error_line(tmp_path, tokenizer_model, capsys,
                                                                          monkeypatch):
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(json.dumps({"text": t}) for t in ["ok", "boom", "fine"]) + "\n")
    real = preprocess.load_tokenizer

    def flaky(spec):
        tok = real(spec)
        enc = tok.encode
        tok.encode = lambda t: (_ for _ in ()).throw(RuntimeError("cannot cast")) if t == "boom" else enc(t)
        return tok

    monkeypatch.setattr(preprocess, "load_tokenizer", flaky)
    s, logs = _run(["--input", str(p), "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "o")])
    assert s["skipped_tokenizer_error"] == 1 and s["docs_written_text"] == 2
    assert any(f"{p}:2: tokenizer error (RuntimeError: cannot cast)" in line for line in logs)
    # --strict: stops at the first bad record with one error line naming file:line, writes nothing
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "ab\\ud83dcd"}\n')
    rc = preprocess.main(["--input", str(bad), "--tokenizer-model", tokenizer_model, "--output-prefix",
                          str(tmp_path / "s"), "--strict", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"error: {bad}:2: lone surrogate (text: U+D83D at character 2)"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("s_")]


def test_train_tokenizer_reads_and_skips_the_same_way(tmp_path, capsys):
    paths, kept = _quirky_files(tmp_path)
    args = train_tokenizer.build_parser().parse_args(["--input", *paths, "--output", str(tmp_path / "m.model")])
    assert list(train_tokenizer._documents(args)) == kept
    logs = capsys.readouterr().err.strip().splitlines()
    assert logs[0].startswith(f"warning: {tmp_path / 'bad.jsonl'}:1: lone surrogate")
    assert logs[-1] == ("warning: 5 values skipped (empty text 1, invalid utf8 1, lone surrogate 1, "
                        "malformed json 2)")
    strict = Namespace(**{**vars(args), "strict": True})
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: lone surrogate"):
        list(train_tokenizer._documents(strict))


def test_multi_key_datasets_stay_aligned_record_for_record(tmp_path, tokenizer_model):
    recs = [{"text": "a1", "title": "t1"}, {"text": "a2", "title": ""}, {"text": "a3", "title": "t3"},
            {"text": "", "title": "t4"}, {"text": "a5"}, {"text": "a6", "title": 7},
            {"text": " ", "title": "\u200b"}, {"text": "a8", "title": "ab\ud83d"}, {"text": "a9", "title": "t9"}]
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    tok = load_tokenizer(tokenizer_model)
    for eod in (False, True):
        prefix = tmp_path / f"o{eod}"
        s, logs = _run(["--input", str(p), "--json-keys", "text", "title", "--tokenizer-model", tokenizer_model,
                        "--output-prefix", str(prefix)] + (["--append-eod"] if eod else []))
        e = tok.decode([tok.eod]) if eod else ""
        text, tlen = _docs(prefix, "text", tok)
        title, ilen = _docs(prefix, "title", tok)
        assert text == [x + e for x in ["a1", "a2", "a3", "", "a5", "a6", "a8", "a9"]]
        assert title == [x + e for x in ["t1", "", "t3", "t4", "", "", "", "t9"]]
        assert [n for n, x in zip(ilen, title) if x == e] == [int(eod)] * 4  # EOD-only with --append-eod
        assert s["skipped_empty_text"] == 1 and s["records_written"] == 8
        assert s["empty_value_title"] == 4 and s["empty_value_text"] == 1
        assert any(f"{p}:6: non string value (title is int); written as an empty 'title' document" in x for x in logs)


def test_nothing_written_is_one_error_naming_the_keys_seen(tmp_path, tokenizer_model, capsys):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"content": f"doc {i}", "id": i}) + "\n" for i in range(120))
                 + json.dumps({"content": "x", "url": "u"}) + "\n")
    rc = preprocess.main(["--input", str(p), "--tokenizer-model", tokenizer_model, "--output-prefix",
                          str(tmp_path / "o"), "--quiet", "--show-errors", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"error: --input {p}: no record had key 'text'; keys seen: content (121 records), "
                               "id (120 records), url (1 record); choose the text field with --json-keys"]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]
    q = tmp_path / "empty.jsonl"
    q.write_text('{"text": ""}\n{"text": "\u200b"}\n')
    assert preprocess.main(["--input", str(q), "--tokenizer-model", tokenizer_model, "--output-prefix",
                            str(tmp_path / "o"), "--quiet", "--show-errors", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --input {q}: no documents written: all 2 records were skipped (empty text 2)"]


# ---- property test: generated jsonl never raises, counts add up, kept text round-trips, keys align

_any_text = st.text(st.characters(blacklist_categories=()), max_size=40) | st.sampled_from(
    ["", " ", "\u200b", "\ufeff", "\r\n", "\u2581", "x" * 20000, "\x00\x1f\x7f\u2028\u202e"])
_value = _any_text | st.none() | st.integers() | st.lists(st.integers(), max_size=2)
_record = st.one_of(
    st.fixed_dictionaries({}, optional={"text": _value, "title": _value, "other": _any_text}),
    st.sampled_from([b"", b"[1]", b'{"text": "unterminated', b'{"text": "\xff\xfe"}', b"   "]))


def _line(rec, ascii_only) -> bytes:
    if isinstance(rec, bytes):
        return rec
    return json.dumps(rec, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")  # fails on a surrogate written raw (ensure_ascii=False): invalid_utf8
    except UnicodeDecodeError:
        return False
    return True


def _good(v, tok):
    return isinstance(v, str) and not any("\ud800" <= c <= "\udfff" for c in v) and tok.normalize(v).strip() != ""


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(recs=st.lists(_record, max_size=8), keys=st.sampled_from([["text"], ["text", "title"]]),
       bom=st.booleans(), crlf=st.booleans(), ascii_only=st.booleans(), eod=st.booleans())
def test_property_generated_jsonl(tokenizer_model, recs, keys, bom, crlf, ascii_only, eod):
    tok = load_tokenizer(tokenizer_model)
    lines = [_line(r, ascii_only) for r in recs]
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(x + (b"\r\n" if crlf else b"\n") for x in lines)
    # the oracle: which lines are records, which records are kept, what each key holds
    expect = []
    for r, raw in zip(recs, lines):
        if isinstance(r, dict) and _utf8(raw):
            vals = [r.get(k) for k in keys]
            if any(_good(v, tok) for v in vals):
                expect.append([tok.normalize(v) if _good(v, tok) else "" for v in vals])
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "in.jsonl")
        with open(p, "wb") as f:
            f.write(data)
        argv = ["--input", p, "--json-keys", *keys, "--tokenizer-model", tokenizer_model,
                "--output-prefix", os.path.join(d, "o"), "--show-errors", "0"] + (["--append-eod"] if eod else [])
        try:
            s, _ = _run(argv)
        except preprocess.BadInput as e:  # nothing to write: the one error, never anything else
            assert not expect and "no " in str(e)
            return
        assert s["docs_read"] + s["blank_lines"] == len(lines)
        assert s["records_written"] + sum(v for k, v in s.items() if k.startswith("skipped_")) == s["docs_read"]
        assert s["records_written"] == len(expect)
        e = tok.decode([tok.eod]) if eod else ""
        for i, k in enumerate(keys):
            texts, _ = _docs(os.path.join(d, "o"), k, tok)
            assert texts == [row[i] + e for row in expect]
