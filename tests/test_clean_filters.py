"""Issue 18, unit level: each cleaning step on small hand-made documents (no executor).

Routing by script, the Thai rules and their reasons, English prose surviving only because it is
routed, boilerplate lines (patterns, and counting in which copies of one text count once), PII
with the Thai ID checksum, MinHash clustering that keeps the first copy in input order, the LSH
numbers docs/data.md quotes, and config errors naming file:line. Text written here (CC0)."""
import os
import random
import socket

import numpy as np
import pytest

pytest.importorskip("datatrove", reason="the cleaning pipeline needs the [data] extra (datatrove)")
pytest.importorskip("pythainlp", reason="the cleaning pipeline needs the [data] extra (pythainlp)")

from datatrove.data import Document  # noqa: E402

from megatron_th.data.clean import dedup, pii, synthetic  # noqa: E402
from megatron_th.data.clean.boilerplate import (BoilerplateLineCounter, BoilerplateLineMerge,  # noqa: E402
                                                BoilerplateLinesFilter)
from megatron_th.data.clean.config import ConfigError, load_config  # noqa: E402
from megatron_th.data.clean.filters import ScriptLanguageFilter, ThaiQualityFilter  # noqa: E402
from megatron_th.data.clean.stages import Plan, filter_steps  # noqa: E402
from megatron_th.data.clean.text import jaccard  # noqa: E402

CFG = load_config()
TH = ("ชาวบ้านริมคลองในอำเภอเมืองได้ร่วมกันปลูกป่าชายเลนเพื่อป้องกันการกัดเซาะชายฝั่ง "
      "และมีการจัดเวรดูแลต้นกล้าทุกสัปดาห์ เจ้าหน้าที่ของเทศบาลกล่าวว่าการฟื้นฟูป่าเป็นงานที่ต้องใช้เวลาหลายปี "
      "แต่ผลที่ได้คือปลาและปูกลับมาอาศัยในคลองมากขึ้น")
TH2 = ("ตลาดนัดสีเขียวของโรงเรียนเปิดทุกเช้าวันเสาร์ ผู้ปกครองนำผักจากสวนหลังบ้านมาขายในราคาย่อมเยา "
       "รายได้ส่วนหนึ่งมอบให้ห้องสมุด นักเรียนชั้นประถมช่วยกันทำป้ายราคาและจดบัญชีรายรับรายจ่าย "
       "ครูเล่าว่าเด็กได้เรียนรู้เรื่องเงินจากของจริงมากกว่าในตำรา")
EN = ("Volunteers from the district planted mangrove seedlings along the canal to protect the shore from erosion, "
      "and they take turns to water the young trees every week. An officer from the town council said that restoring "
      "the forest takes years of patient work, but crabs and fish have already returned to the water in large numbers.")
EN2 = ("Every Saturday morning the school runs a small green market. Parents bring vegetables from their gardens and "
       "sell them cheaply, and part of the money goes to the library. Pupils write the price tags and keep the "
       "accounts, and their teacher says they learn more about money this way than from any textbook.")


def run_steps(steps, text):
    """(kept?, 'stage/reason') for one document through filter steps, as the pipeline applies them."""
    doc = Document(text=text, id="t", metadata={})
    for step in steps:
        res = step.filter(doc)
        ok, reason = res if isinstance(res, tuple) else (res, None)
        if not ok:
            return False, f"{step.name}/{reason}", doc
    return True, None, doc


def routed_steps():
    steps = filter_steps(Plan(paths=[], output_dir="unused", config=CFG, tasks=1), lambda stage: None)
    steps[0].lines_folder = None  # patterns only: no corpus counts here
    return steps


def test_routing_by_script_and_english_survives_only_by_routing():
    route = ScriptLanguageFilter()
    for text, lang in ((TH, "th"), (EN, "en"), (TH + " Bangkok Post, Reuters, AP", "th")):
        doc = Document(text=text, id="x", metadata={})
        assert route.filter(doc) is True and doc.metadata["language"] == lang
    assert route.filter(Document(text="今天我们在公园里散步。" * 5, id="x")) == (False, "no_majority_script")
    assert route.filter(Document(text="12345 67890 !!! ???", id="x")) == (False, "no_majority_script")
    # the full chain keeps both, English judged by the English rules
    assert run_steps(routed_steps(), TH + "\n" + TH2)[:2] == (True, None)
    assert run_steps(routed_steps(), EN + "\n" + EN2)[:2] == (True, None)
    # ... and had the Thai rules judged the English text, it would have been removed
    doc = Document(text=EN + "\n" + EN2, id="x", metadata={"language": "th"})
    thai_rules = [s for s in routed_steps() if getattr(s, "language", None) == "th"]
    assert any(s.filter(doc) is not True for s in thai_rules)
    english_as_thai = Document(text=EN + EN2, id="x", metadata={"language": "th"})
    assert ThaiQualityFilter().filter(english_as_thai) == (False, "thai_ratio")


@pytest.mark.parametrize("text,reason", [
    ("ขายรถมือสองสภาพดี ติดต่อเจ้าของโดยตรง", "too_short"),
    ("กระเป๋าผ้า 1250 บาท 3499 บาท 2250 บาท 8899 บาท " * 10, "digit_ratio"),
    ("กระเป๋าผ้าฝ้าย ★★★ !!! ♥♥ ✓✓ " * 10, "symbol_ratio"),
    ("กระเป๋าผ้าฝ้าย Cottonbagsxyz ~*~*~*~*~*~* " * 10, "thai_ratio"),
])
def test_thai_quality_reasons(text, reason):
    assert ThaiQualityFilter().filter(Document(text=text, id="x", metadata={"language": "th"})) == (False, reason)
    assert ThaiQualityFilter().filter(Document(text=text, id="x", metadata={"language": "en"})) is True


def test_generated_junk_gets_its_reason_and_clean_documents_pass():
    """Every junk document of the generated corpus is removed by the rule it was made for; the
    clean documents, their copies and the PII sentences pass the quality rules."""
    steps = routed_steps()
    names = {s.name: stage for s, stage in zip(steps, ["boilerplate", "script_language", "thai_quality"] + [
        f"{k}_{lang}" for lang in ("th", "en") for k in ("gopher_repetition", "fineweb_quality", "gopher_quality")])}
    for d in synthetic.make_corpus(seed=1, n_th=12, n_en=6, near_th=4, near_en=2, exact=1):
        kept, why, _ = run_steps(steps, d.text)
        if d.kind == "junk":
            stage, reason = why.split("/")
            assert f"{names[stage]}/{reason}" == d.expect
        else:
            assert kept, (d.kind, why, d.text[:80])


def test_boilerplate_patterns_thai_and_english():
    f = BoilerplateLinesFilter(None, CFG["boilerplate"]["patterns"])
    boiler = ["Posted by admin in Uncategorized", "โพสต์โดย สมชาย เมื่อ 3 มีนาคม 2566",
              "Copyright © 2019 Foo. All rights reserved.",
              "สงวนลิขสิทธิ์ © 2563 บ้านสวน", "แชร์: Facebook Twitter Line", "Share on Facebook",
              "เว็บไซต์นี้ใช้คุกกี้เพื่อพัฒนาประสบการณ์ ยอมรับ", "This website uses cookies. Accept",
              "หน้าแรก | ข่าว | บทความ | ติดต่อเรา", "Home » News » Local", "Tags: travel, food", "อ่านต่อ »",
              "หมวดหมู่: ท่องเที่ยว", "« Previous post"]
    prose = [TH, EN, "Share prices rose on Monday after the bank cut interest rates.", "วิธีทำคุกกี้เนยสดแบบง่าย",
             "Copyright law protects the expression of ideas, not the ideas themselves.", "บทนำ", "สรุปผลการทดลอง",
             "เขียนหนังสือเล่มแรกตอนอายุสิบห้า", "ราคา 100 > 50 บาท"]
    assert [f.line_kind(x) for x in boiler] == ["pattern"] * len(boiler)
    assert [f.line_kind(x) for x in prose] == [None] * len(prose)
    doc = Document(text="\n".join([boiler[8], TH, boiler[0], boiler[4]]), id="x", metadata={})
    assert f.filter(doc) is True and doc.text == TH and doc.metadata["original_text"].startswith(boiler[8])
    assert f.filter(Document(text="\n".join(boiler), id="y", metadata={})) == (False, "no_text_left")


def test_boilerplate_counting_copies_count_once(tmp_path):
    """A footer on 3 different pages is boilerplate (min_docs 3); the title of one article copied
    3 times (same paragraphs) is not, since the copies share their body key."""
    footer, title = "ติดต่อฝ่ายขายได้ทุกวันทำการ", "ชาวบ้านริมคลองปลูกป่าชายเลน"
    pages = [f"{footer}\n{text}" for text in (TH, TH2, EN)]
    copies = [f"{title}\n{TH}\n{extra}" for extra in ("", "ขอบคุณภาพจากผู้อ่าน", "อ่านข่าวอื่น")]
    docs = [Document(text=t, id=str(i), metadata={}) for i, t in enumerate(pages + copies)]
    counter = BoilerplateLineCounter(str(tmp_path / "counts"), partitions=2)
    counter.run(iter(docs[:3]), rank=0, world_size=2)
    counter.run(iter(docs[3:]), rank=1, world_size=2)
    for p in range(2):
        BoilerplateLineMerge(str(tmp_path / "counts"), str(tmp_path / "lines"), min_docs=3).run(None, p, 2)
    f = BoilerplateLinesFilter(str(tmp_path / "lines"), [])
    assert f.line_kind(footer) == "repeated" and f.line_kind(title) is None


def thai_id_reference(d):  # issue 18's formula, written out: d13 = (11 - sum_{i=1..12} d_i (14 - i) mod 11) mod 10
    return (11 - sum(int(d[i - 1]) * (14 - i) for i in range(1, 13)) % 11) % 10


def test_pii_every_form_replaced_and_wrong_checksums_kept():
    rng = random.Random(3)
    for k in range(200):
        v = synthetic.thai_id(rng)
        assert pii.thai_id_valid(v) and thai_id_reference(v) == int(v[12])
        bad = synthetic.thai_id(rng, valid=False)
        assert not pii.thai_id_valid(bad) and thai_id_reference(bad) != int(bad[12])
    forms, wrong = [], []
    for i in range(64):
        s, planted, fake = synthetic.pii_sentence(rng, i, thai=i % 2 == 0)
        forms.append((s, planted))
        wrong += fake
    total = {"email": 0, "phone": 0, "th_id": 0}
    for s, planted in forms:
        out, counts = pii.replace_pii(s)
        assert not any(p in out for p in planted), (s, out)              # recall 1.0
        assert sum(counts.values()) == len(planted)
        for k, v in counts.items():
            total[k] += v
    assert min(total.values()) >= 8  # every kind exercised
    text = " ".join(f"เลขอ้างอิง {w}" for w in wrong) + " ราคา 1500 บาท ปี 2566 รหัสไปรษณีย์ 10200 บัญชี 123-4-56789-0"
    assert pii.replace_pii(text) == (text, {"email": 0, "th_id": 0, "phone": 0})
    for phone in ("081-234-5678", "0812345678", "081 234 5678", "08-1234-5678", "+66 81 234 5678", "+66812345678",
                  "+66 (0) 2 123 4567", "02-123-4567", "021234567", "+66-2-123-4567"):
        assert pii.replace_pii(f"โทร {phone} ได้") == ("โทร <PHONE> ได้", {"email": 0, "th_id": 0, "phone": 1})


def test_minhash_cluster_keeps_first_in_input_order(tmp_path):
    """Pairs found in buckets, in any task layout: the document first in (file, line) order is
    kept; a copy with exactly the same text is an exact duplicate, others near duplicates; a
    MinHash pair whose full signatures agree on fewer than min_jaccard of their values is dropped."""
    sig = tmp_path / "sig"
    (sig / "order").mkdir(parents=True)
    # task 0 holds (file 1, lines 5, 9), task 1 holds (file 0, line 7), (file 2, line 1)
    np.save(sig / "order" / "00000.npy", np.array([1 << 32 | 5, 1 << 32 | 9], np.uint64))
    np.save(sig / "order" / "00001.npy", np.array([7, 2 << 32 | 1], np.uint64))
    dups = tmp_path / "dups"
    dups.mkdir()
    np.array([[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 1]], "<u4").tofile(dups / "00000_00.dups")  # near pairs
    np.array([[0, 1, 1, 1]], "<u4").tofile(dups / "00003_00.dups")                # exact pair (bucket 3)
    dedup.InputOrderMinhashCluster(str(dups), str(sig), str(tmp_path / "rm"), exact_bucket=3).run()
    r0, r1 = np.load(tmp_path / "rm" / "00000.npy"), np.load(tmp_path / "rm" / "00001.npy")
    assert r0.tolist() == [(0, dedup.NEAR, 7), (1, dedup.NEAR, 7)]   # one cluster: file 0 line 7 (task 1) is first
    assert r1.tolist() == [(1, dedup.EXACT, 7)]                         # an exact copy of (file 1, line 9)
    # with verification: the pair (task 0 doc 1, task 1 doc 1) agrees on 1/4 of its values only
    (sig / "full").mkdir()
    np.save(sig / "full" / "00000.npy", np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.uint32))
    np.save(sig / "full" / "00001.npy", np.array([[1, 2, 3, 9], [5, 0, 0, 0]], np.uint32))
    np.array([[0, 0, 1, 0], [0, 1, 1, 1]], "<u4").tofile(dups / "00000_00.dups")
    (dups / "00003_00.dups").unlink()
    dedup.InputOrderMinhashCluster(str(dups), str(sig), str(tmp_path / "rm2"), exact_bucket=3, min_jaccard=0.7).run()
    assert np.load(tmp_path / "rm2" / "00000.npy").tolist() == [(0, dedup.NEAR, 7)]   # 3/4 agree: kept as a pair
    assert np.load(tmp_path / "rm2" / "00001.npy").tolist() == []                     # 1/4: not a near-duplicate
    docs = [Document(text=str(i), id=str(i), metadata={}) for i in range(2)]
    step = dedup.InputOrderMinhashFilter(str(tmp_path / "rm"), ["a.jsonl", "b.jsonl", "c.jsonl"])
    kept = list(step.run(iter(docs), 1))
    assert [d.id for d in kept] == ["0"] and docs[1].metadata["duplicate_of"] == "a.jsonl:7"


def test_lsh_numbers_in_the_docs():
    b, r = CFG["minhash"]["num_buckets"], CFG["minhash"]["hashes_per_bucket"]
    assert (b, r) == (14, 8)
    assert round(dedup.lsh_threshold(b, r), 2) == 0.72
    assert round(dedup.lsh_probability(0.8, b, r), 3) == 0.924 and round(dedup.lsh_probability(0.5, b, r), 3) == 0.053
    assert jaccard("abcdefgh", "abcdefgh") == 1.0 and jaccard("abcdefgh", "zzzzzzzz") == 0.0
    assert jaccard("ab  cd\u0e40\u0e02", "ab cd\u0e40\u0e02") == 1.0  # whitespace collapsed


def test_thai_words_offline(monkeypatch):
    """newmm-safe uses the dictionary in the wheel: nothing connects anywhere, nothing is created in HOME."""
    from megatron_th.data.clean.tokenizers import ThaiWordTokenizer
    assert os.environ["PYTHAINLP_OFFLINE"] == "1" and os.environ["PYTHAINLP_READ_ONLY"] == "1"

    def no_network(*a, **k):
        raise AssertionError("network access")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    words = ThaiWordTokenizer().word_tokenize("การประชุมครั้งนี้มีผู้เข้าร่วมจำนวนมาก Posted by admin")
    assert words[:2] == ["การประชุม", "ครั้งนี้"] and words[-3:] == ["Posted", "by", "admin"]


@pytest.mark.parametrize("body,message", [
    ("thai_gopher_quality:\n  min_avg_word_length: 3\n  min_words: 5\n",
     ":3: unknown key thai_gopher_quality.min_words"),
    ("minhash:\n  shingle: words\n", ":2: minhash.shingle must be one of ['char', 'word']"),
    ("boilerplate:\n  patterns: ['(unclosed']\n", ":2: boilerplate.patterns: '(unclosed' is not a regular expression"),
    ("thai_gopher_repetition:\n  top_n_grams: {2: 1.5}\n", ":2: top_n_grams needs n >= 1 and fractions in [0, 1]"),
    ("languages: {}\n", ":1: unknown section 'languages'"),
    ("minhash: [1, 2\n", ": not valid YAML"),
    ("minhash:\n  min_estimated_jaccard: 1.5\n", ":2: minhash.min_estimated_jaccard must be a fraction in [0, 1]"),
])
def test_config_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_config_overlay_keeps_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("minhash:\n  num_buckets: 20\nthai_gopher_repetition:\n  top_n_grams: {2: 0.3}\n")
    cfg = load_config(str(path))
    assert cfg["minhash"]["num_buckets"] == 20 and cfg["minhash"]["hashes_per_bucket"] == 8
    assert cfg["thai_gopher_repetition"]["top_n_grams"] == ((2, 0.3),)
    assert cfg["thai_gopher_repetition"]["dup_line_frac"] == 0.349
