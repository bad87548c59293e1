"""tools/preprocess_sft.py: record shapes, chat templates and the assistant mask (built-ins, HF's own,
``{% generation %}`` = transformers' mask), filters, bad records, parquet, the embedded chat set."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from megatron_th.data import preprocess_sft as ps
from megatron_th.data.chat_template import BUILTIN, ChatEncoder, TemplateError, resolve_template
from megatron_th.data.indexed import IndexedDataset
from megatron_th.data.sft_filters import assistant_runs, count_words, truncate
from megatron_th.data.sft_records import RecordError, normalize_record
from megatron_th.data.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = os.path.join(ROOT, "megatron_th", "assets", "chat")

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "สวัสดีครับ"},
        {"role": "assistant", "content": "สวัสดีครับ มีอะไรให้ช่วยไหมครับ"},
        {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": " 2 + 3 = 5. "}]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
# ChatML with the assistant's content and end of turn inside {% generation %}, and a variant marking
# the content only (so its mask differs from what the prefix method would give)
CHATML_GEN = """{%- for message in messages %}
{%- if message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>\\n' }}{% endgeneration %}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
CONTENT_ONLY_GEN = CHATML_GEN.replace(
    "{% generation %}{{- message['content'] + '<|im_end|>\\n' }}{% endgeneration %}",
    "{% generation %}{{- message['content'] }}{% endgeneration %}{{- '<|im_end|>\\n' }}")


def _write_jsonl(path, objs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n")
    return str(path)


def _run(argv, tool=ps):
    """``tool.run`` (this module's or preprocess_dpo's) on ``argv``: (summary, logged lines)."""
    logs = []
    summary = tool.run(tool.build_parser().parse_args(argv + ["--quiet"]), log=logs.append)
    return summary, logs


def _nothing_written(tool, argv, tmp_path, capsys) -> str:
    """The one ``error:`` line of a run of ``tool.main`` that writes nothing (exit 1, no file left
    under ``tmp_path`` named for --output-prefix ``none``)."""
    assert tool.main(argv + ["--output-prefix", str(tmp_path / "none"), "--quiet"]) == 1
    err = [m for m in capsys.readouterr().err.splitlines() if not m.startswith(("warning:", "chat template:"))]
    assert len(err) == 1, err
    assert not [f for f in os.listdir(tmp_path) if f.startswith("none")]  # nothing written, no .tmp left
    return err[0]


def _generated(folder, script, monkeypatch):
    """``build()`` of an asset generator ``folder/script``, after checking that the files it
    writes there hold exactly its output."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ among the packaged assets
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(folder, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, heldout = module.build()
    for name, records in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            assert f.read() == module.dumps(records), f"{name} differs from {script}'s output"
    return train, heldout


def _read(prefix):
    toks, mask = IndexedDataset(f"{prefix}_tokens"), IndexedDataset(f"{prefix}_loss_mask")
    assert mask.dtype == np.uint8 and len(toks) == len(mask)
    assert list(toks.sizes) == list(mask.sizes)  # record-aligned, same length
    return [(list(map(int, toks[i])), list(map(int, mask[i]))) for i in range(len(toks))]


@pytest.fixture(scope="module")
def spm(tokenizer_model):
    return load_tokenizer(tokenizer_model)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny byte-level BPE tokenizer with ChatML and Llama-3 control tokens, made offline."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [m["content"] for m in CONV] + ["system user assistant", "Hello there, how are you today?"]
    tk.train_from_iterator(texts * 20, trainer)
    d = str(tmp_path_factory.mktemp("hf_chat_tok"))
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|begin_of_text|>",
                            additional_special_tokens=SPECIALS[1:]).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def hf(hf_dir):
    return load_tokenizer("hf:" + hf_dir)


def _runs_text(tok, ids, mask):
    return [tok.decode(ids[s:e]) for s, e in assistant_runs(mask)]


# ---------------------------------------------------------------- record shapes

def test_record_shapes_normalise():
    want = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert normalize_record({"messages": want}) == want
    assert normalize_record({"system": "S", "messages": want[1:]}) == want
    assert normalize_record({"system": "S", "conversations": [{"from": "human", "value": "Q"},
                                                              {"from": "gpt", "value": "A"}]}) == want
    assert normalize_record({"system": "S", "prompt": "Q", "completion": "A"}) == want
    assert normalize_record({"prompt": want[:2], "completion": want[2:]}) == want
    assert normalize_record({"system": "S", "instruction": "Q", "input": "", "output": "A"}) == want
    assert normalize_record({"instruction": "Q", "input": "x", "output": "A"})[0]["content"] == "Q\n\nx"
    multi = want + [{"role": "user", "content": "Q2"}, {"role": "tool", "content": "T"},
                    {"role": "assistant", "content": "A2"}]
    assert normalize_record({"messages": multi, "id": 7}) == multi
    for bad, reason in [({"text": "x"}, "unknown_shape"), ({"messages": "x"}, "wrong_shape"),
                        ({"prompt": "x"}, "wrong_shape"),
                        ({"messages": [{"role": "bot", "content": "x"}]}, "unknown_role"),
                        ({"messages": [{"role": "user", "content": ["x"]}]}, "non_string_content"),
                        ({"messages": want[:2]}, "no_assistant_turn"),
                        ({"messages": [want[2], want[1], want[2]]}, "wrong_shape"),
                        ({"conversations": [{"from": "human", "value": "\ud83d"}]}, "lone_surrogate")]:
        with pytest.raises(RecordError) as e:
            normalize_record(bad)
        assert e.value.reason == reason, (bad, e.value)


def test_every_shape_through_the_tool_same_tokens(tmp_path, tokenizer_model, spm):
    conv = [{"role": "user", "content": "แปลเป็นภาษาอังกฤษ: แมว"}, {"role": "assistant", "content": "cat"}]
    shapes = [{"messages": conv}, {"conversations": [{"from": "human", "value": conv[0]["content"]},
                                                     {"from": "gpt", "value": "cat"}]},
              {"prompt": conv[0]["content"], "completion": "cat"}, {"prompt": conv[:1], "completion": conv[1:]},
              {"instruction": conv[0]["content"], "output": "cat"}]
    path = _write_jsonl(tmp_path / "in.jsonl", shapes)
    s, _ = _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "o")])
    docs = _read(tmp_path / "o")
    assert s["conversations_written"] == 5 and all(d == docs[0] for d in docs)
    ids, mask = docs[0]
    assert spm.decode(ids) == "<|im_start|>user\nแปลเป็นภาษาอังกฤษ: แมว\n<|im_start|>assistant\ncat\n"
    [(start, end)] = assistant_runs(mask)
    assert _runs_text(spm, ids, mask) == ["cat\n"] and ids[end - 2] == spm.eod  # <|im_end|> -> EOS
    assert s["tokens"] == len(ids) * 5 and s["loss_tokens"] == sum(mask) * 5


# ---------------------------------------------------------------- templates and the mask

@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_builtin_mask_hf(hf, name):
    desc, source = resolve_template(name, hf)
    assert source == BUILTIN[name]  # the tokenizer has the end-of-turn token: the template is standard
    enc = ChatEncoder(hf, source)
    ids, mask, retok = enc.encode(CONV)
    assert ids == hf.tok.apply_chat_template(CONV, chat_template=source, tokenize=True)["input_ids"]
    assert not retok and len(mask) == len(ids)
    answers = [m["content"] for m in CONV if m["role"] == "assistant"]
    if name == "chatml":
        want = [a + "<|im_end|>\n" for a in answers]
    else:
        want = [a.strip() + "<|eot_id|>" for a in answers]
    assert _runs_text(hf, ids, mask) == want  # content + end of turn; no header, no user/system token
    assert hf.decode([t for t, m in zip(ids, mask) if not m]).count("assistant") == 2


def test_generation_template_is_transformers_mask(hf):
    for source in (CHATML_GEN, CONTENT_ONLY_GEN):
        enc = ChatEncoder(hf, source)
        assert enc.generation
        ids, mask, _ = enc.encode(CONV)
        ref = hf.tok.apply_chat_template(CONV, chat_template=source, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
        assert ids == ref["input_ids"] and mask == ref["assistant_masks"]
    # the prefix method on plain ChatML marks exactly what transformers marks for CHATML_GEN
    assert ChatEncoder(hf, BUILTIN["chatml"]).encode(CONV) == ChatEncoder(hf, CHATML_GEN).encode(CONV)
    only = ChatEncoder(hf, CONTENT_ONLY_GEN).encode(CONV)
    assert _runs_text(hf, only.ids, only.mask) == ["สวัสดีครับ มีอะไรให้ช่วยไหมครับ", " 2 + 3 = 5. "]


def test_template_choice_hf_own_file_and_errors(hf, hf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hf.tok, "chat_template", CHATML_GEN)
    assert resolve_template(None, hf) == ("the tokenizer's chat_template", CHATML_GEN)
    monkeypatch.setattr(hf.tok, "chat_template", None)
    assert resolve_template(None, hf)[1] == BUILTIN["chatml"]
    f = tmp_path / "t.jinja"
    f.write_text(CONTENT_ONLY_GEN, encoding="utf-8")
    path = _write_jsonl(tmp_path / "in.jsonl", [{"messages": CONV}])
    _run(["--input", path, "--tokenizer-model", "hf:" + hf_dir, "--output-prefix", str(tmp_path / "o"),
          "--chat-template", str(f)])
    [(ids, mask)] = _read(tmp_path / "o")
    assert (ids, mask) == tuple(ChatEncoder(hf, CONTENT_ONLY_GEN).encode(CONV)[:2])
    with pytest.raises(TemplateError, match="neither a built-in"):
        resolve_template("nosuch", hf)
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ raise_exception('no') }}", encoding="utf-8")
    assert ps.main(["--input", path, "--tokenizer-model", "hf:" + hf_dir, "--output-prefix", str(tmp_path / "b"),
                    "--chat-template", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --chat-template {bad}: the template cannot render"), err


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_builtin_mask_sentencepiece(spm, name):
    desc, source = resolve_template(name, spm)
    # th_en.model has no chat tokens: EOS ends a turn
    assert ("<|im_end|>" if name == "chatml" else "<|eot_id|>") not in source and "</s>" in source
    enc = ChatEncoder(spm, source)
    ids, mask, _ = enc.encode(CONV)
    answers = [m["content"] for m in CONV if m["role"] == "assistant"]
    if name == "chatml":
        assert enc.end_of_turn == [spm.eod] + spm.encode("\n")
        assert _runs_text(spm, ids, mask) == [a + "\n" for a in answers]  # EOS decodes to nothing
    else:
        assert ids[0] == spm.bos and enc.end_of_turn == [spm.eod]
        assert _runs_text(spm, ids, mask) == [a.strip() for a in answers]
    for s, e in assistant_runs(mask):
        assert spm.eod in ids[s:e]


class _MergingTokenizer:
    """One id per character, except ':b' -> 1000: a token across the header/content boundary."""
    bos, eod, pad, unk = 1, 2, None, None

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text.startswith(":b", i):
                out.append(1000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def id_to_piece(self, i):
        return {1: "<s>", 2: "</s>", 1000: ":b"}.get(i) or chr(i)


def test_prefix_mismatch_is_tokenized_piece_by_piece(tmp_path):
    t = ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}"
         "{% if add_generation_prompt %}assistant:{% endif %}")
    enc = ChatEncoder(_MergingTokenizer(), t)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]
    ids, mask, retok = enc.encode(conv)
    assert retok and ids == [ord(c) for c in "user:hi;assistant:"] + [ord(c) for c in "bye;"]
    assert mask == [0] * 18 + [1] * 4
    ids, mask, retok = enc.encode([conv[0], {"role": "assistant", "content": "ok"}])  # no merge: whole text
    assert not retok and ids == [ord(c) for c in "user:hi;assistant:ok;"] and sum(mask) == 3
    with pytest.raises(RecordError, match="not a prefix"):  # a template that renders the last turn differently
        ChatEncoder(_MergingTokenizer(), "{% for m in messages %}{{ m['content'] }}{% if not loop.last and "
                    "messages[-1]['content'] == 'y' %}*{% endif %}{% endfor %}").encode(
            conv + [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])


# ---------------------------------------------------------------- options and filters

def test_train_on_prompts_marks_everything(tmp_path, tokenizer_model):
    path = _write_jsonl(tmp_path / "in.jsonl", [{"messages": CONV}])
    _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "a")])
    _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "b"),
          "--train-on-prompts"])
    [(ids_a, mask_a)], [(ids_b, mask_b)] = _read(tmp_path / "a"), _read(tmp_path / "b")
    assert ids_a == ids_b and 0 < sum(mask_a) < len(mask_a) and mask_b == [1] * len(ids_b)


def test_truncate_rules():
    ids = list(range(20))
    mask = [0] * 4 + [1] * 4 + [0] * 4 + [1] * 8  # assistant turns [4, 8) and [12, 20)
    eot, eot_mask = [98, 99], [1, 1]
    assert truncate(ids, mask, 16, eot, eot_mask) == (ids[:14] + eot, mask[:14] + [1, 1])  # last turn cut, EOT kept
    assert truncate(ids, mask, 14, eot, eot_mask) == (ids[:8], mask[:8])  # nothing of turn 2 left: ends after turn 1
    assert truncate(ids, mask, 10, eot, eot_mask) == (ids[:8], mask[:8])  # turn 2 starts after the limit
    assert truncate(ids, mask, 6, eot, eot_mask) is None  # no assistant token would remain
    assert truncate(ids, mask, 7, eot, eot_mask) == (ids[:5] + eot, mask[:5] + [1, 1])
    assert truncate(ids, mask, 16, [], []) == (ids[:16], mask[:16])  # no known end of turn: plain cut


def test_filters_counted(tmp_path, tokenizer_model, spm):
    def conv(*turns):
        return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]}
    recs = [conv("Hi", "Hello there, my friend."), conv("Hi", "   "), conv("Q", "ok"), conv("Tell me", "word " * 80),
            conv("a", "short one here", "b", "long " * 80), conv("x " * 80, "y y y"),
            conv("Hi", "Hello again friend", "", " ")]
    path = _write_jsonl(tmp_path / "in.jsonl", recs)
    base = ["--input", path, "--tokenizer-model", tokenizer_model,
            "--max-seq-length", "80", "--min-response-words", "2"]
    s, logs = _run(base + ["--output-prefix", str(tmp_path / "t"), "--overlong", "truncate"])
    assert (s["filtered_empty_assistant_turn"], s["filtered_short_response_words"], s["filtered_overlong"]) == (2, 1, 1)
    assert s["truncated"] == 2 and s["conversations_written"] == 3
    assert "4 filtered (empty assistant turn 2, overlong 1, short response words 1), 2 truncated" in logs[-2]
    docs = _read(tmp_path / "t")
    assert [len(d[0]) for d in docs][1:] == [80, 80]
    for ids, mask in docs[1:]:
        assert ids[-2:] == [spm.eod] + spm.encode("\n") and mask[-2:] == [1, 1]  # end of turn kept
    s, _ = _run(base + ["--output-prefix", str(tmp_path / "d")])  # --overlong drop (the default)
    assert s["filtered_overlong"] == 3 and s["conversations_written"] == 1 and not s["truncated"]
    n_tokens = len(spm.encode("Hello there, my friend."))
    s, _ = _run(base[:2] + base[2:4] + ["--output-prefix", str(tmp_path / "n"), "--min-response-tokens",
                                        str(n_tokens + 1)])
    assert s["filtered_short_response_tokens"] == 3  # "Hello there, my friend.", "ok" and "y y y"
    assert ps.main(base[:4] + ["--output-prefix", str(tmp_path / "x"), "--overlong", "truncate"]) == 1


def test_count_words_thai_estimate_and_latin():
    # hand-segmented (| between words): the estimate behind THAI_CHARS_PER_WORD
    segmented = ["วันนี้|อากาศ|ดี|มาก", "ฉัน|ชอบ|กิน|ข้าว|ผัด|กุ้ง", "ประเทศ|ไทย|มี|เมืองหลวง|ชื่อ|กรุงเทพมหานคร",
                 "แมว|เป็น|สัตว์|เลี้ยง|ที่|น่ารัก", "สาม|บวก|สี่|เท่ากับ|เจ็ด", "เขา|ไป|โรงเรียน|ทุก|วัน",
                 "ขอบคุณ|มาก|ครับ", "น้ำ|เดือด|ที่|หนึ่งร้อย|องศา|เซลเซียส", "หนึ่ง|สัปดาห์|มี|เจ็ด|วัน",
                 "คุณ|ช่วย|แปล|ประโยค|นี้|เป็น|ภาษาอังกฤษ|ได้|ไหม", "ดวงอาทิตย์|ขึ้น|ทาง|ทิศตะวันออก",
                 "พรุ่งนี้|ฉัน|จะ|ไป|ตลาด|กับ|แม่"]
    words = sum(s.count("|") + 1 for s in segmented)
    estimate = sum(count_words(s.replace("|", "")) for s in segmented)
    assert words == 66 and abs(estimate - words) <= 0.2 * words, estimate
    assert count_words("The quick  brown\nfox, 42!") == 5 and count_words("") == 0
    assert count_words("ข้าว 45 บาท") == 3 and count_words("Thaiไทย") == 2


# ---------------------------------------------------------------- bad input

def test_bad_records_counted_with_file_line(tmp_path, tokenizer_model, capsys):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    lines = [good, "not json", "[1, 2]", {"text": "x"}, {"messages": "hi"},
             {"messages": [{"role": "bot", "content": "x"}]},
             {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
             {"messages": [{"role": "user", "content": "x"}]}, "",
             '{"conversations": [{"from": "human", "value": "a\\ud83d"}, {"from": "gpt", "value": "b"}]}',
             {"prompt": "x"}, good]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    s, logs = _run(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "o"),
                    "--show-errors", "20"])
    want = {2: "malformed_json", 3: "not_an_object", 4: "unknown_shape", 5: "wrong_shape", 6: "unknown_role",
            7: "non_string_content", 8: "no_assistant_turn", 10: "lone_surrogate", 11: "wrong_shape"}
    for line, reason in want.items():
        assert any(m.startswith(f"warning: {path}:{line}: {reason.replace('_', ' ')}") for m in logs), (line, logs)
    counts = {k[len("skipped_"):]: v for k, v in s.items() if k.startswith("skipped_")}
    assert counts == {"malformed_json": 1, "not_an_object": 1, "unknown_shape": 1, "wrong_shape": 2, "unknown_role": 1,
                      "non_string_content": 1, "no_assistant_turn": 1, "lone_surrogate": 1}
    assert s["conversations_written"] == 2 and s["blank_lines"] == 1 and len(_read(tmp_path / "o")) == 2

    only_bad = _write_jsonl(tmp_path / "only_bad.jsonl", lines[1:-1])
    out = str(tmp_path / "none")
    err = _nothing_written(ps, ["--input", only_bad, "--tokenizer-model", tokenizer_model], tmp_path, capsys)
    assert err.startswith(f"error: --input {only_bad}: no conversation written: of 9 records 9 were skipped"), err
    text_only = _write_jsonl(tmp_path / "text.jsonl", [{"text": "a"}, {"text": "b", "id": 1}])
    assert ps.main(["--input", text_only, "--tokenizer-model", tokenizer_model, "--output-prefix", out, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no record has a chat shape" in err and "keys seen: text (2 records), id (1 record)" in err
    assert ps.main(["--input", path, "--tokenizer-model", tokenizer_model, "--output-prefix", out, "--strict"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {path}:2: malformed json (Expecting value)"


def test_gz_parquet_match_jsonl_and_missing_pyarrow(tmp_path, tokenizer_model, monkeypatch, capsys):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"messages": CONV}, {"messages": CONV[1:3]}]
    alpaca = [{"instruction": "Add 2 and 3", "input": "", "output": "5"},
              {"instruction": "Say hi", "input": "x", "output": "hi"}]
    outs = []
    for name, rows in (("chat", recs), ("alpaca", alpaca)):
        js = _write_jsonl(tmp_path / f"{name}.jsonl", rows)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
        (tmp_path / f"{name}.jsonl.gz").write_bytes(gzip.compress((tmp_path / f"{name}.jsonl").read_bytes()))
        for src in (js, str(tmp_path / f"{name}.parquet"), str(tmp_path / f"{name}.jsonl.gz")):
            prefix = str(tmp_path / os.path.basename(src).replace(".", "_"))
            _run(["--input", src, "--tokenizer-model", tokenizer_model, "--output-prefix", prefix])
            outs.append(_read(prefix))
    assert outs[0] == outs[1] == outs[2] and outs[3] == outs[4] == outs[5] and len(outs[0]) == len(outs[3]) == 2
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert ps.main(["--input", str(tmp_path / "chat.parquet"), "--tokenizer-model", tokenizer_model,
                    "--output-prefix", str(tmp_path / "np"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "needs pyarrow" in err[-1] and "Traceback" not in "".join(err)


# ---------------------------------------------------------------- the embedded chat set

def test_embedded_chat_set(tmp_path, tokenizer_model, spm, monkeypatch):
    train, heldout = _generated(CHAT, "make_chat.py", monkeypatch)
    assert len(train) >= 300 and len(heldout) >= 40
    key = lambda r: json.dumps([m for m in r["messages"] if m["role"] != "system"], ensure_ascii=False)  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in heldout}
    assert sum(len(r["messages"]) > 3 for r in train) >= 30  # multi-turn
    assert sum(r["messages"][0]["role"] == "system" for r in train) >= 50

    prefixes = []
    for workers in ("1", "2"):
        prefix = str(tmp_path / f"w{workers}")
        s, _ = _run(["--input", os.path.join(CHAT, "train.jsonl"), "--tokenizer-model", tokenizer_model,
                     "--output-prefix", prefix, "--workers", workers, "--chunk-size", "50"])
        assert s["conversations_written"] == len(train) and s["docs_read"] == len(train)
        prefixes.append(prefix)
    for suffix in ("_tokens.bin", "_tokens.idx", "_loss_mask.bin", "_loss_mask.idx"):
        with open(prefixes[0] + suffix, "rb") as a, open(prefixes[1] + suffix, "rb") as b:
            assert a.read() == b.read(), suffix  # input order whatever --workers
    assert IndexedDataset(prefixes[0] + "_tokens").dtype == np.uint16
    for rec, (ids, mask) in zip(train, _read(prefixes[0])):
        answers = [m["content"] + "\n" for m in rec["messages"] if m["role"] == "assistant"]
        assert _runs_text(spm, ids, mask) == answers


def test_exported_hf_tokenizer_renders_the_same(spm, tmp_path):
    """The sentencepiece model exported for transformers (convert_to_hf's tokenizer) gives the same ids
    and mask with the same built-in, so HF-side evaluation can rebuild our SFT data."""
    pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    from megatron_th.convert.hf_tokenizer import export_tokenizer

    export_tokenizer(spm, str(tmp_path), model_max_length=2048)
    hf = load_tokenizer(f"hf:{tmp_path}")
    with open(os.path.join(CHAT, "heldout.jsonl"), encoding="utf-8") as f:
        convs = [json.loads(line)["messages"] for line in f]
    for name in BUILTIN:
        ours, theirs = (ChatEncoder(t, resolve_template(name, t)[1]) for t in (spm, hf))
        assert resolve_template(name, spm)[1] == resolve_template(name, hf)[1]
        assert ours.end_of_turn == theirs.end_of_turn and spm.eod in ours.end_of_turn
        for conv in convs:
            assert ours.encode(conv) == theirs.encode(conv)
