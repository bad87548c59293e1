"""tools/preprocess_dpo.py: text pairs tokenized as TRL's tokenize_row (prompt, completion, EOS),
message-list pairs rendered and masked as SFT, truncation / drop / filters counted, bad records with
file:line, the output as data/dpo_dataset.py reads it, and the embedded preference set."""
import importlib.util
import os
import re
import sys

import pytest

from megatron_th.data import preprocess_dpo as pd
from megatron_th.data.chat_template import ChatEncoder, resolve_template
from megatron_th.data.dpo_dataset import build_dpo_datasets
from megatron_th.data.sft_filters import assistant_runs
from megatron_th.data.tokenizer import load_tokenizer
from tests.test_preprocess_sft import _generated, _nothing_written, _read, _runs_text, _write_jsonl
from tests.test_preprocess_sft import _run as sft_run
from tests.test_preprocess_sft import hf, hf_dir  # noqa: F401 (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFS = os.path.join(ROOT, "megatron_th", "assets", "preferences")


def _run(argv):
    return sft_run(argv, pd)


def _pairs(prefix):
    """[((chosen ids, mask), (rejected ids, mask))] as written (record-aligned: checked)."""
    chosen, rejected = _read(f"{prefix}_chosen"), _read(f"{prefix}_rejected")
    assert len(chosen) == len(rejected)
    return list(zip(chosen, rejected))


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _tok(request, name):
    """(tokenizer, --tokenizer-model) of the embedded sentencepiece model or the tiny HF tokenizer."""
    if name == "spm":
        spec = request.getfixturevalue("tokenizer_model")
        return load_tokenizer(spec), spec
    return request.getfixturevalue("hf"), "hf:" + request.getfixturevalue("hf_dir")


# ---------------------------------------------------------------- the two shapes

@pytest.mark.parametrize("name", ["spm", "hf"])
def test_text_pairs_are_prompt_then_completion_then_eos(tmp_path, request, name):
    """TRL's tokenize_row: ids(prompt) + ids(completion) + [EOS], tokenized apart; EOS is a completion token."""
    tok, spec = _tok(request, name)
    recs = [{"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon."},
            {"prompt": "เมืองหลวงของไทยคือ", "chosen": "กรุงเทพมหานครครับ", "rejected": "Bangkok.", "id": 3}]
    s, logs = _run(["--input", _write_jsonl(tmp_path / "t.jsonl", recs), "--tokenizer-model", spec,
                    "--output-prefix", str(tmp_path / "o")])
    assert s["pairs_written"] == 2 and not s["truncated"]
    for rec, pair in zip(recs, _pairs(tmp_path / "o")):
        prompt = tok.encode(rec["prompt"])
        if name == "hf":  # transformers itself, as TRL calls it
            assert prompt == tok.tok(rec["prompt"], add_special_tokens=False)["input_ids"]
        for side, (ids, mask) in zip(("chosen", "rejected"), pair):
            completion = tok.encode(rec[side])
            assert ids == prompt + completion + [tok.eod]
            assert mask == [0] * len(prompt) + [1] * (len(completion) + 1)
    assert s["chosen_completion_tokens"] == sum(sum(c[1]) for c, _ in _pairs(tmp_path / "o"))
    assert "2 pairs written" in logs[-2]


@pytest.mark.parametrize("name", ["spm", "hf"])
def test_message_pairs_rendered_as_sft_mask_on_the_completion_only(tmp_path, request, name):
    tok, spec = _tok(request, name)
    prompt = [{"role": "system", "content": "Be brief."}, _u("สวัสดีครับ"), _a("สวัสดีครับ มีอะไรให้ช่วยไหมครับ"),
              _u("What is 2 + 3?")]
    chosen, rejected = [_a("2 + 3 = 5.")], [_a("2 + 3 = 6.")]
    two_turns = [_a("It is 5."), _a("2 + 3 = 5.")]
    recs = [{"prompt": prompt, "chosen": chosen, "rejected": rejected},
            {"chosen": prompt + chosen, "rejected": prompt + rejected},  # implicit prompt (TRL's extract_prompt)
            {"system": "Be brief.", "prompt": prompt[1:], "chosen": chosen, "rejected": rejected},
            {"prompt": prompt, "chosen": two_turns, "rejected": rejected}]
    s, _ = _run(["--input", _write_jsonl(tmp_path / "m.jsonl", recs), "--tokenizer-model", spec,
                 "--output-prefix", str(tmp_path / "o")])
    pairs = _pairs(tmp_path / "o")
    assert s["pairs_written"] == 4 and pairs[0] == pairs[1] == pairs[2]
    enc = ChatEncoder(tok, resolve_template("chatml", tok)[1])
    end = "<|im_end|>\n" if name == "hf" else "\n"  # th_en.model: EOS ends a turn and decodes to nothing
    for (ids, mask), completion in zip(pairs[0], (chosen, rejected)):
        full = enc.encode(prompt + completion)
        assert ids == full.ids  # SFT's rendering of the same conversation
        runs = assistant_runs(full.mask)
        assert len(runs) == 2 and mask[:runs[0][1]] == [0] * runs[0][1]  # the prompt's assistant turn: 0
        assert mask[runs[0][1]:] == full.mask[runs[0][1]:]
        assert _runs_text(tok, ids, mask) == [completion[0]["content"] + end]
    (c_ids, c_mask), (r_ids, _) = pairs[3]
    assert _runs_text(tok, c_ids, c_mask) == [m["content"] + end for m in two_turns]
    start = assistant_runs(c_mask)[0][0]
    assert c_ids[:start] == r_ids[:start]  # the same prompt tokens on both sides


# ---------------------------------------------------------------- length, filters, bad input

def test_budget_cuts_the_longer_side_first():
    assert pd.budget((10, 20), 40) == (10, 20)
    assert pd.budget((10, 50), 40) == (10, 30)
    assert pd.budget((50, 10), 40) == (30, 10)
    assert pd.budget((30, 25), 41) == (21, 20)


def test_overlong_truncated_or_dropped_and_filters_counted(tmp_path, tokenizer_model):
    spm = load_tokenizer(tokenizer_model)
    long = " ".join(["word"] * 80)
    recs = [{"prompt": "Say something.", "chosen": "A " + long, "rejected": "B"},             # rejected fits
            {"prompt": "Say something.", "chosen": "A " + long, "rejected": "B " + long},     # both cut
            {"prompt": " ".join(["prompt"] * 40), "chosen": "A", "rejected": "B"},            # prompt too long
            {"prompt": "Q", "chosen": long + " A", "rejected": long + " B"},                  # equal once cut
            {"prompt": "Q", "chosen": "A", "rejected": "B"},
            {"prompt": "Q", "chosen": "same", "rejected": "same"}, {"prompt": "Q", "chosen": " ", "rejected": "B"},
            {"prompt": "", "chosen": "A", "rejected": "B"},
            {"prompt": [_u("Q")], "chosen": [], "rejected": [_a("B")]},
            {"prompt": [_u("Q")], "chosen": [_a("A " + long)], "rejected": [_a("B " + long)]}]
    path = _write_jsonl(tmp_path / "l.jsonl", recs)
    base = ["--input", path, "--tokenizer-model", tokenizer_model, "--max-seq-length", "64"]
    s, logs = _run(base + ["--output-prefix", str(tmp_path / "t"), "--overlong", "truncate"])
    assert (s["truncated"], s["pairs_written"]) == (3, 4), s
    assert (s["filtered_overlong_prompt"], s["filtered_identical"], s["filtered_empty_completion"],
            s["filtered_empty_prompt"]) == (1, 2, 2, 1), s
    assert "6 filtered (empty completion 2, empty prompt 1, identical 2, overlong prompt 1), 3 truncated" in logs[-2]
    pairs = _pairs(tmp_path / "t")
    prompt = spm.encode("Say something.")
    for (c_ids, c_mask), (r_ids, r_mask) in pairs[:2]:
        assert len(c_ids) + len(r_ids) <= 64 and c_ids[:len(prompt)] == r_ids[:len(prompt)] == prompt
        for ids, mask in ((c_ids, c_mask), (r_ids, r_mask)):
            assert ids[-1] == spm.eod and mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
    (c0, _), (r0, _) = pairs[0]
    assert r0 == prompt + spm.encode("B") + [spm.eod] and len(c0) == 64 - len(r0)  # only the long side cut
    (c1, _), (r1, _) = pairs[1]
    assert (len(c1), len(r1)) == (32, 32)
    (c3, m3), (r3, _) = pairs[3]  # message lists: the template's end of turn kept
    assert len(c3) + len(r3) <= 64 and c3[-2:] == [spm.eod] + spm.encode("\n") and m3[-2:] == [1, 1]
    s, _ = _run(base + ["--output-prefix", str(tmp_path / "d")])  # --overlong drop (the default)
    assert s["filtered_overlong"] == 5 and s["pairs_written"] == 1 and not s["truncated"]


def test_bad_records_counted_with_file_line(tmp_path, tokenizer_model, capsys):
    good = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    lines = [good, "not json", "[1]", {"text": "x"}, {"prompt": "Q", "chosen": "A"},
             {"prompt": "Q", "chosen": [_a("A")], "rejected": "B"}, {"prompt": "Q", "chosen": 5, "rejected": "B"},
             {"prompt": [{"role": "bot", "content": "Q"}], "chosen": [_a("A")], "rejected": [_a("B")]},
             {"prompt": [_u("Q")], "chosen": [_u("A")], "rejected": [_a("B")]},
             '{"prompt": "Q", "chosen": "A\\ud83d", "rejected": "B"}',
             {"chosen": [_u("Q"), _a("A")], "rejected": [_u("R"), _a("B")]},
             {"chosen": "A", "rejected": "B"}, good]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    s, logs = _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "o"),
                    "--show-errors", "20"])
    want = {2: "malformed_json", 3: "not_an_object", 4: "unknown_shape", 5: "wrong_shape", 6: "wrong_shape",
            7: "non_string_content", 8: "unknown_role", 9: "wrong_shape", 10: "lone_surrogate", 11: "wrong_shape",
            12: "wrong_shape"}
    for line, reason in want.items():
        assert any(m.startswith(f"warning: {path}:{line}: {reason.replace('_', ' ')}") for m in logs), (line, logs)
    counts = {k[len("skipped_"):]: v for k, v in s.items() if k.startswith("skipped_")}
    assert counts == {"malformed_json": 1, "not_an_object": 1, "unknown_shape": 1, "wrong_shape": 5,
                      "non_string_content": 1, "unknown_role": 1, "lone_surrogate": 1}
    assert s["pairs_written"] == 2 and len(_pairs(tmp_path / "o")) == 2

    only_bad = _write_jsonl(tmp_path / "only_bad.jsonl", lines[1:-1])
    out = str(tmp_path / "none")
    err = _nothing_written(pd, ["--input", only_bad, "--tokenizer-model", tokenizer_model], tmp_path, capsys)
    assert err.startswith(f"error: --input {only_bad}: no pair written: of 11 records 11 were skipped"), err
    text_only = _write_jsonl(tmp_path / "text.jsonl", [{"text": "a"}, {"messages": []}])
    err = _nothing_written(pd, ["--input", text_only, "--tokenizer-model", tokenizer_model], tmp_path, capsys)
    assert "no record has a preference shape" in err and "keys seen: text (1 record), messages (1 record)" in err
    assert pd.main(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", out, "--strict",
                    "--quiet"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {path}:2: malformed json (Expecting value)"
    assert pd.main(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", out,
                    "--overlong", "truncate"]) == 1
    assert capsys.readouterr().err.strip() == "error: --overlong truncate needs --max-seq-length"


# ---------------------------------------------------------------- the training side reads it

def test_dpo_dataset_samples_line_up_with_what_was_written(tmp_path, tokenizer_model):
    recs = [{"prompt": f"What is {i} + {i}?", "chosen": f" {2 * i}.", "rejected": f" {2 * i + 1}." + " no" * i}
            for i in range(1, 6)] + [{"prompt": [_u("Hi")], "chosen": [_a("Hello!")], "rejected": [_a("สวัสดี")]}]
    prefix = str(tmp_path / "o")
    _run(["--input", _write_jsonl(tmp_path / "d.jsonl", recs), "--tokenizer-model", tokenizer_model,
          "--output-prefix", prefix, "--max-seq-length", "40", "--overlong", "truncate"])
    pairs = _pairs(prefix)
    ds = build_dpo_datasets(prefix, "100,0,0", 40, 1, {"train": len(pairs)}, log=lambda m: None)["train"]
    assert sorted(int(ds[i]["pair_id"]) for i in range(len(pairs))) == list(range(len(pairs)))
    for i in range(len(pairs)):
        x = ds[i]
        (c, cm), (r, rm) = pairs[int(x["pair_id"])]
        n = len(c) + len(r)
        assert x["tokens"][:n].tolist() == c + r and x["cu_seqlens"].tolist() == [0, len(c), n, 40]
        assert x["chosen_mask"].tolist() == cm[1:] + [0] * (40 - len(c) + 1)  # label t counts when mask[t + 1]
        assert x["rejected_mask"][len(c):n - 1].tolist() == rm[1:] and x["rejected_mask"].sum() == sum(rm)
        assert x["labels"][:len(c) - 1].tolist() == c[1:] and x["position_ids"][len(c)] == 0


# ---------------------------------------------------------------- the embedded preference set

def _thai(text):
    """Whether most letters of ``text`` are Thai."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum("\u0e00" <= ch <= "\u0e7f" for ch in letters) * 2 > len(letters)


def _generator(monkeypatch):
    """make_preferences.py as a module (no __pycache__ among the packaged assets)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    spec = importlib.util.spec_from_file_location("make_preferences", os.path.join(PREFS, "make_preferences.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedded_preference_set(tmp_path, tokenizer_model, monkeypatch):
    spm = load_tokenizer(tokenizer_model)
    train, heldout = _generated(PREFS, "make_preferences.py", monkeypatch)
    assert len(train) >= 250 and len(heldout) >= 40
    # the grounding passages make the records longer than plain questions: still a small set
    assert sum(os.path.getsize(os.path.join(PREFS, f)) for f in os.listdir(PREFS)) < 250_000
    question = lambda r: r["prompt"][-1]["content"]  # noqa: E731
    assert not {question(r) for r in train} & {question(r) for r in heldout}
    for records in (train, heldout):
        langs = {_thai(question(r)) for r in records}
        why = {r["id"].split("-")[2] for r in records}
        assert langs == {True, False} and why == {"lang", "fact"}
        for r in records:
            q, chosen, rejected = question(r), r["chosen"][0]["content"], r["rejected"][0]["content"]
            assert _thai(chosen) == _thai(q) and chosen != rejected
            assert _thai(rejected) != _thai(q) if "-lang-" in r["id"] else _thai(rejected) == _thai(q), r

    # grounding pairs: the chosen answer takes its value from the prompt's passage and stops; the
    # rejected one is the same answer followed by a claim whose values the prompt does not hold
    gen = _generator(monkeypatch)
    grounded = {split: gen.grounded(split) for split in ("train", "heldout")}
    claims = {}
    for split, records in (("train", train), ("heldout", heldout)):
        facts = [r for r in records if "-fact-" in r["id"]]
        assert sorted(r["id"] for r in facts) == sorted(g[0]["id"] for g in grounded[split])
        assert len({r["id"] for r in records}) == len(records) and len(facts) >= len(records) // 3
        claims[split] = []
        for rec, passage, q, value, invented in grounded[split]:
            assert rec in facts and passage in question(rec) and question(rec).endswith(q), rec
            chosen, rejected = rec["chosen"][0]["content"], rec["rejected"][0]["content"]
            assert gen.occurs(value, passage) and gen.occurs(value, chosen), rec
            assert rejected.startswith(chosen + " ") and invented, rec
            claim = rejected[len(chosen) + 1:]
            assert any(re.fullmatch(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(t)), claim)
                       for t in gen.CLAIMS[split][rec["id"].split("-")[1]]), claim
            for v in invented:
                assert gen.occurs(v, claim) and not gen.occurs(v, question(rec)), (v, rec)
            claims[split].append(claim)
    # held-out grounding pairs are new: no passage, question or claim shares 20 characters with a
    # training prompt or claim, and no held-out value (right or invented) occurs in a training passage
    train_prompts = ["\n".join(m["content"] for m in r["prompt"]) for r in train] + claims["train"]
    seen = {t[i:i + 20] for t in train_prompts for i in range(len(t) - 19)}
    train_passages = "\n".join(p for _, p, _, _, _ in grounded["train"])
    for (rec, passage, q, value, invented), claim in zip(grounded["heldout"], claims["heldout"]):
        for text in (passage, q, claim):
            assert not any(text[i:i + 20] in seen for i in range(len(text) - 19)), text
        for v in (value, *invented):
            assert not gen.occurs(v, train_passages), (v, rec["id"])

    prefix = str(tmp_path / "p")
    s, _ = _run(["--input", os.path.join(PREFS, "train.jsonl"), os.path.join(PREFS, "heldout.jsonl"),
                 "--tokenizer-model", tokenizer_model, "--output-prefix", prefix])
    assert s["pairs_written"] == s["docs_read"] == len(train) + len(heldout)
    for rec, ((c, cm), (r, rm)) in zip(train + heldout, _pairs(prefix)):
        assert _runs_text(spm, c, cm) == [rec["chosen"][0]["content"] + "\n"]
        assert _runs_text(spm, r, rm) == [rec["rejected"][0]["content"] + "\n"]
    assert max(len(c) + len(r) for (c, _), (r, _) in _pairs(prefix)) <= 256  # the demo's --seq-length fits all
