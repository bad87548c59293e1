"""tools/preprocess_data.py: exact ids, order under workers, bad input accounting, atomic output."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_th.data import preprocess
from megatron_th.data.indexed import IndexedDataset
from megatron_th.data.tokenizer import load_tokenizer

TEXTS = ["สวัสดีครับ ภาษาไทย\nบรรทัดที่สอง", "Hello world, 123.", "ข้าวมันไก่ 45 บาท", "น้ำ ๑๒๓ ำ", "x" * 3000]


def _write_jsonl(path, objs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")


def _run(argv):
    logs = []
    summary = preprocess.run(preprocess.build_parser().parse_args(argv), log=logs.append)
    return summary, logs


@pytest.fixture
def good_input(tmp_path):
    p = tmp_path / "in.jsonl"
    _write_jsonl(p, [{"text": t, "id": i} for i, t in enumerate(TEXTS)] * 20)
    return p


def test_ids_exact_and_order_kept_with_workers(tmp_path, good_input, tokenizer_model):
    tok = load_tokenizer(tokenizer_model)
    outs = {}
    for w in (1, 2):
        prefix = tmp_path / f"w{w}"
        s, _ = _run(["--input", str(good_input), "--tokenizer-model", tokenizer_model, "--output-prefix",
                     str(prefix), "--append-eod", "--workers", str(w), "--chunk-size", "7", "--quiet"])
        ds = IndexedDataset(f"{prefix}_text_document")
        assert len(ds) == 100 and s["docs_written_text"] == 100
        for i in range(100):
            assert list(ds[i]) == tok.encode(TEXTS[i % 5]) + [tok.eod]
        assert s["tokens"] == ds.num_tokens
        outs[w] = (open(f"{prefix}_text_document.bin", "rb").read(), open(f"{prefix}_text_document.idx", "rb").read())
    assert outs[1] == outs[2]


def test_no_eod_without_flag_and_several_keys(tmp_path, tokenizer_model):
    p = tmp_path / "in.jsonl"
    _write_jsonl(p, [{"text": "ก ข", "title": "หัวข้อ"}, {"text": "abc", "title": "t"}])
    _run(["--input", str(p), "--json-keys", "text", "title", "--tokenizer-model", tokenizer_model,
          "--output-prefix", str(tmp_path / "o"), "--quiet"])
    tok = load_tokenizer(tokenizer_model)
    assert list(IndexedDataset(tmp_path / "o_text_document")[1]) == tok.encode("abc")
    assert list(IndexedDataset(tmp_path / "o_title_document")[0]) == tok.encode("หัวข้อ")


def test_gz_and_parquet_match_jsonl(tmp_path, good_input, tokenizer_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(good_input.read_bytes()))
    pq.write_table(pa.table({"text": TEXTS * 20}), tmp_path / "in.parquet")
    res = []
    for name in ("in.jsonl", "in.jsonl.gz", "in.parquet"):
        prefix = tmp_path / name.replace(".", "_")
        _run(["--input", str(tmp_path / name), "--tokenizer-model", tokenizer_model,
              "--output-prefix", str(prefix), "--append-eod", "--quiet"])
        res.append(open(f"{prefix}_text_document.bin", "rb").read())
    assert res[0] == res[1] == res[2]


def _dirty_file(path):
    lines = [
        json.dumps({"text": "ดี"}, ensure_ascii=False).encode(),     # 1 ok
        b'{"text": "broken',                                          # 2 malformed
        json.dumps({"body": "no text key"}).encode(),                 # 3 missing key
        json.dumps({"text": 42}).encode(),                            # 4 non-string
        b'{"text": "bad \xff\xfe bytes"}',                            # 5 invalid utf-8
        json.dumps({"text": ""}).encode(),                            # 6 empty
        json.dumps({"text": "   \n "}).encode(),                      # 7 empty (whitespace)
        b"[1, 2]",                                                    # 8 not an object
        json.dumps({"text": "fine"}).encode(),                        # 9 ok
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_records_counted_reported_and_skipped(tmp_path, tokenizer_model):
    p = tmp_path / "dirty.jsonl"
    _dirty_file(p)
    s, logs = _run(["--input", str(p), "--tokenizer-model", tokenizer_model, "--output-prefix",
                    str(tmp_path / "o"), "--quiet", "--show-errors", "3"])
    assert s["docs_read"] == 9 and s["docs_written_text"] == 2
    assert s["skipped_malformed_json"] == 1 and s["skipped_missing_key"] == 1
    assert s["skipped_non_string_value"] == 1 and s["skipped_invalid_utf8"] == 1
    assert s["skipped_empty_text"] == 2 and s["skipped_not_an_object"] == 1
    warnings = [l for l in logs if l.startswith("warning")]
    assert len(warnings) == 3
    assert warnings[0].startswith(f"warning: {p}:2: malformed json")
    assert f"{p}:3: missing key (text)" in warnings[1]
    summary = [l for l in logs if l.startswith("done:")][0]
    assert "9 records read, 2 documents written, 7 skipped" in summary
    assert len(IndexedDataset(tmp_path / "o_text_document")) == 2


def test_strict_fails_with_location_and_writes_nothing(tmp_path, tokenizer_model):
    p = tmp_path / "dirty.jsonl"
    _dirty_file(p)
    out = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(p), "--tokenizer-model",
                          tokenizer_model, "--output-prefix", str(tmp_path / "o"), "--strict", "--quiet"],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"error: {p}:2: malformed json (Unterminated string starting at)"
    assert sorted(os.listdir(tmp_path)) == ["dirty.jsonl"]


def test_missing_input_and_bad_extension(tmp_path, tokenizer_model):
    with pytest.raises(FileNotFoundError, match="--input .*nope"):
        _run(["--input", str(tmp_path / "nope*.jsonl"), "--tokenizer-model", tokenizer_model,
              "--output-prefix", str(tmp_path / "o")])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported format"):
        _run(["--input", str(tmp_path / "x.csv"), "--tokenizer-model", tokenizer_model,
              "--output-prefix", str(tmp_path / "o")])


def test_shipped_dirty_records(tmp_path, tokenizer_model, corpus_dir):
    """The realistic dirty file: empties are skipped and counted; the rest is kept byte-exact
    (cleaning and dedup are separate steps; preprocessing never silently drops text)."""
    path = os.path.join(corpus_dir, "dirty.jsonl")
    recs = [json.loads(l) for l in open(path, encoding="utf-8")]
    kinds = {r["dirty"] for r in recs}
    assert {"footer_boilerplate", "exact_duplicate", "near_duplicate", "empty", "zero_width"} <= kinds
    s, _ = _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "d"),
                 "--append-eod", "--quiet"])
    empties = sum(1 for r in recs if not r["text"].strip())
    assert empties == 3 and s["skipped_empty_text"] == empties
    assert s["docs_written_text"] == len(recs) - empties
    tok = load_tokenizer(tokenizer_model)
    kept = [r["text"] for r in recs if r["text"].strip()]
    ds = IndexedDataset(tmp_path / "d_text_document")
    for i, text in enumerate(kept):
        assert list(ds[i]) == tok.encode(text) + [tok.eod]
    zw = next(r["text"] for r in recs if r["dirty"] == "zero_width")
    assert "\u200b" not in tok.decode(tok.encode(zw))  # zero-width spaces are dropped by the tokenizer
