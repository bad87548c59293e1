"""Issue 18, the proof: tools/clean_data.py's pipeline on a generated Thai+English corpus.

The corpus (megatron_th/data/clean/synthetic.py, original text) has clean documents with planted
footers, navigation and "posted by" lines and planted PII, near-duplicates at measured Jaccard
similarities (character 5-grams of the NFC text, whitespace collapsed), exact copies, documents
made to fail each rule, and unreadable records. The pipeline runs twice with datatrove's
LocalPipelineExecutor: 1 task, and 4 tasks in a pool of 2 worker processes; each run also writes
Megatron .bin/.idx with the embedded tokenizer. Asserted: the issue's figures, every removal
reason, identical output for both runs, and .bin/.idx equal to tools/preprocess_data.py's."""
import filecmp
import glob
import gzip
import json
import os

import pytest

pytest.importorskip("datatrove", reason="the cleaning pipeline needs the [data] extra (datatrove)")
pytest.importorskip("pythainlp", reason="the cleaning pipeline needs the [data] extra (pythainlp)")

from megatron_th.data.clean import cli, synthetic  # noqa: E402
from megatron_th.data.clean.boilerplate import BoilerplateLinesFilter  # noqa: E402
from megatron_th.data.clean.text import char_ngrams  # noqa: E402
from megatron_th.data.preprocess import main as preprocess_main  # noqa: E402

BAD_LINES = ['{"id": "bad-1", "text": broken', '{"id": "bad-2"}', '{"id": "bad-3", "text": 5}',
             '{"id": "bad-4", "text": "  "}']
DEDUP = ("minhash_dedup/near_duplicate", "exact_dedup/exact_duplicate")


def read(folder):
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [json.loads(line) for line in f]
    return out


class Run:
    def __init__(self, out, tasks, workers, paths, tokenizer):
        self.out = out
        argv = ["--input", *paths, "--output-dir", out, "--tasks", str(tasks), "--workers", str(workers),
                "--tokenizer-model", tokenizer, "--output-prefix", os.path.join(out, "th_web"), "--append-eod",
                "--quiet"]
        self.argv = argv
        self.stats = cli.run(cli.build_parser().parse_args(argv), start_method="fork")
        self.kept, self.removed = read(os.path.join(out, "kept")), read(os.path.join(out, "removed"))
        self.removed_by_id = {r["id"]: r for r in self.removed if "id" in r}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = synthetic.make_corpus(seed=0)
    paths = synthetic.write_jsonl(docs, str(tmp_path_factory.mktemp("crawl")), files=8, extra_lines=BAD_LINES)
    return docs, paths


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory, tokenizer_model):
    docs, paths = corpus
    root = tmp_path_factory.mktemp("clean")
    return (Run(str(root / "one_task"), 1, 1, paths, tokenizer_model),
            Run(str(root / "four_tasks"), 4, 2, paths, tokenizer_model))


def doc_id(i):
    return f"doc-{i:04d}"


def locations(docs, paths):
    """``path:line`` of each generated document, as synthetic.write_jsonl placed them."""
    out, line = [], {}
    for i in range(len(docs)):
        path = paths[i * len(paths) // len(docs)]
        line[path] = line.get(path, 0) + 1
        out.append(f"{path}:{line[path]}")
    return out


def test_every_record_accounted_for(corpus, runs):
    docs, _ = corpus
    for run in runs:
        s = run.stats
        assert s["input_docs"] == len(docs) + len(BAD_LINES)
        assert s["kept_docs"] == len(run.kept) and sum(s["removed"].values()) == len(run.removed)
        assert s["input_docs"] == s["kept_docs"] + sum(s["removed"].values())
        assert sorted(os.listdir(os.path.join(run.out, "kept"))) == sorted(os.listdir(os.path.join(run.out, "removed")))
    one, four = ({k: v for k, v in run.stats.items() if k != "megatron"} for run in runs)
    assert one == four and runs[0].stats["megatron"]["tokens"] == runs[1].stats["megatron"]["tokens"]


def test_each_removal_reason(corpus, runs):
    docs, paths = corpus
    run, where = runs[0], locations(docs, paths)
    for i, d in enumerate(docs):
        got = run.removed_by_id.get(doc_id(i), {})
        if d.kind == "junk":
            assert got.get("removed_by") == d.expect
        elif d.kind == "exact_dup":
            assert got["removed_by"] == "exact_dedup/exact_duplicate" and got["duplicate_of"] == where[d.original]
        elif got.get("removed_by") == "minhash_dedup/near_duplicate":
            assert got["duplicate_of"] == where[d.original]
    read_errors = {r["source"].rsplit(":", 1)[1]: r["removed_by"] for r in run.removed if "source" in r}
    assert sorted(read_errors.values()) == ["read/empty_text", "read/malformed_json", "read/missing_key",
                                            "read/non_string_value"]
    assert all(r["source"].startswith(paths[-1]) for r in run.removed if "source" in r)
    for r in run.removed:  # removed records are the input records (original text) plus removed_by
        if "id" in r:
            i = int(r["id"][4:])
            assert r["text"] == docs[i].text and r["url"].endswith(f"/{i}")


def test_near_duplicates_recall_and_precision(corpus, runs):
    docs, _ = corpus
    run = runs[0]
    pairs = [(i, d) for i, d in enumerate(docs) if d.kind == "near_dup" and d.jaccard >= 0.8]
    assert len(pairs) >= 15
    found = [i for i, d in pairs if run.removed_by_id.get(doc_id(i), {}).get("removed_by") in DEDUP]
    recall = len(found) / len(pairs)
    kept_sets = [char_ngrams(docs[int(r["id"][4:])].text) for r in run.kept]
    removed = [r for r in run.removed if r.get("removed_by") in DEDUP]
    false = [r for r in removed
             if max(len(s & k) / len(s | k) for s in [char_ngrams(r["text"])] for k in kept_sets) < 0.5]
    precision = 1 - len(false) / len(removed)
    print(f"near-duplicates: recall {recall:.3f} ({len(found)}/{len(pairs)} pairs with Jaccard >= 0.8), "
          f"precision {precision:.3f} ({len(removed)} removed)")
    assert recall >= 0.9 and precision >= 0.99
    originals = {d.original for d in docs if d.kind in ("near_dup", "exact_dup")}
    assert all(doc_id(i) not in run.removed_by_id for i in originals)  # the first copy is the one kept


def test_quality_filters_keep_clean_documents(corpus, runs):
    docs, _ = corpus
    for kind in ("clean_th", "clean_en"):
        idx = [i for i, d in enumerate(docs) if d.kind == kind]
        removed = [i for i in idx if doc_id(i) in runs[0].removed_by_id]
        print(f"{kind}: {len(removed)} of {len(idx)} removed")
        assert len(removed) <= 0.05 * len(idx)


def test_boilerplate_lines(corpus, runs):
    """Line recall of planted footer/navigation/"posted by" lines >= 0.9, <= 1% of other lines removed,
    as the pipeline decides (its corpus counts and patterns), and kept texts lost exactly those lines."""
    docs, _ = corpus
    run = runs[0]
    plan = cli._plan(cli.build_parser().parse_args(run.argv))
    bp = plan.config["boilerplate"]
    lines_filter = BoilerplateLinesFilter(os.path.join(run.out, "work", "boilerplate", "lines"), bp["patterns"],
                                          bp["max_line_chars"])
    hit = {True: [0, 0], False: [0, 0]}
    for d in docs:
        if d.kind.startswith("clean"):
            for line, planted in zip(d.text.split("\n"), d.lines):
                hit[planted][lines_filter.line_kind(line) is not None] += 1
    recall = hit[True][1] / sum(hit[True])
    other = hit[False][1] / sum(hit[False])
    print(f"boilerplate lines: recall {recall:.3f} of {sum(hit[True])}, "
          f"other lines removed {other:.4f} of {sum(hit[False])}")
    assert recall >= 0.9 and other <= 0.01
    kept = {r["id"]: r["text"] for r in run.kept}
    for i, d in enumerate(docs):
        if d.kind.startswith("clean") and doc_id(i) in kept:
            planted = [line for line, b in zip(d.text.split("\n"), d.lines) if b]
            assert not any(line in kept[doc_id(i)].split("\n") for line in planted)


def test_pii(corpus, runs):
    docs, _ = corpus
    run = runs[0]
    kept = {r["id"]: r["text"] for r in run.kept}
    planted = {"email": 0, "phone": 0, "th_id": 0}
    for i, d in enumerate(docs):
        if doc_id(i) in kept:
            assert not any(p in kept[doc_id(i)] for p in d.pii)               # recall 1.0
            assert all(f in kept[doc_id(i)] for f in d.fake_ids)              # wrong checksum: left alone
            for p in d.pii:
                planted["email" if "@" in p else "th_id" if len(p.replace("-", "")) == 13 else "phone"] += 1
    assert run.stats["pii"] == planted and min(planted.values()) >= 3


def test_kept_records_keep_every_field(corpus, runs):
    docs, _ = corpus
    for r in runs[0].kept:
        i = int(r["id"][4:])
        assert list(r) == ["id", "url", "text"] and r["url"] == f"https://site{i % 7}.example/{i}"
        assert docs[i].kind in ("clean_th", "clean_en", "near_dup")


def test_same_output_for_1_and_4_tasks(runs):
    one, four = runs
    assert one.kept == four.kept and one.removed_by_id == four.removed_by_id
    for ext in (".bin", ".idx"):
        assert filecmp.cmp(os.path.join(one.out, "th_web_text_document" + ext),
                           os.path.join(four.out, "th_web_text_document" + ext), shallow=False)


def test_bin_idx_equal_preprocess_data(runs, tokenizer_model, tmp_path):
    run = runs[1]
    prefix = str(tmp_path / "pre")
    assert preprocess_main(["--input", os.path.join(run.out, "kept", "*.jsonl.gz"), "--tokenizer-model",
                            tokenizer_model, "--output-prefix", prefix, "--append-eod", "--quiet"]) == 0
    for ext in (".bin", ".idx"):
        assert filecmp.cmp(prefix + "_text_document" + ext, os.path.join(run.out, "th_web_text_document" + ext),
                           shallow=False)
    assert run.stats["megatron"]["documents"] == run.stats["kept_docs"]


def test_rerun_resumes_and_other_settings_are_refused(runs, tmp_path, capsys):
    run = runs[0]
    before = os.path.getmtime(os.path.join(run.out, "kept", "00000.jsonl.gz"))
    assert cli.run(cli.build_parser().parse_args(run.argv)) == run.stats       # every stage complete: nothing reruns
    assert os.path.getmtime(os.path.join(run.out, "kept", "00000.jsonl.gz")) == before
    cfg = tmp_path / "other.yaml"
    cfg.write_text("minhash:\n  num_buckets: 20\n")
    assert cli.main(run.argv + ["--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --output-dir") and "other config" in err[0]
