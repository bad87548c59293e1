"""Hugging Face tokenizer export (AutoTokenizer gives our exact ids) and vocabulary extension."""
import glob
import io
import json
import os
import random
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")

from megatron_th.convert.hf_arch import ConversionError  # noqa: E402
from megatron_th.convert.hf_tokenizer import (  # noqa: E402
    REMOTE_MODULE, SAMPLE_TEXTS, export_tokenizer, import_check, load_hf, load_model_proto, piece_bytes, piece_text)
from megatron_th.data import extend_tokenizer as et  # noqa: E402
from megatron_th.data import train_tokenizer as tt  # noqa: E402
from megatron_th.data.tokenizer import HFTokenizer, SentencePieceTokenizer, strip_invisible  # noqa: E402

TRICKY = [
    "", " ", "  ", "\n", "\n\n", "\n\n\n", " \n \n ", "\t", "a\tb\t\tc", "   leading", "trailing   ",
    "two  spaces   three    four", "ภาษาไทย\nEnglish\n\nไทย", "ค่ะ\r\nครับ", "0123456789 ๐๑๒๓๔๕๖๗๘๙ 3.14159",
    "emoji 🙂👍🏽🇹🇭 and rare 𝔘 ℵ ☃", "ก\u200bข\u200bค", "\ufeffBOM first", "\u200b\u200b", "\u200b leading zw",
    "no-break\u00a0space", "▁literal▁meta", "<0x41> is text", "ｆｕｌｌｗｉｄｔｈ", "naïve café", "ำ น้ำ ๆ ฯ",
    "x" * 300, "ก" * 200 + " " * 50 + "\n" * 5,
]


def corpus_texts(corpus_dir):
    texts = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


@pytest.fixture(scope="module")
def ours(tokenizer_model):
    return SentencePieceTokenizer(tokenizer_model)


@pytest.fixture(scope="module")
def hf_dir(ours, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf_tok"))
    files = export_tokenizer(ours, d, model_max_length=2048)
    assert sorted(files) == sorted(os.listdir(d)) == sorted(
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"])
    return d


@pytest.fixture(scope="module")
def hf(hf_dir):
    return load_hf(hf_dir)  # AutoTokenizer, local_files_only=True


def _first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_whole_corpus_same_ids_and_decode(ours, hf, corpus_dir):
    texts = corpus_texts(corpus_dir)
    assert len(texts) >= 170
    batch = hf(texts)["input_ids"]
    tokens = 0
    for text, got in zip(texts, batch):
        ids = ours.encode(text)
        assert got == ids, (text[:80], _first_diff(got, ids))
        assert hf.encode(text) == ids
        assert hf.decode(ids) == ours.decode(ids) == strip_invisible(text)
        tokens += len(ids)
    assert tokens > 35000


@pytest.mark.parametrize("text", TRICKY + list(SAMPLE_TEXTS))
def test_tricky_strings(ours, hf, text):
    ids = ours.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.encode(text, add_special_tokens=True) == hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == ours.decode(ids) == strip_invisible(text).replace("▁", " ")


def test_random_strings(ours, hf, corpus_dir):
    """Random corpus slices with random insertions, and random character soup."""
    text = "".join(corpus_texts(corpus_dir))
    chars = sorted(set(text)) + list(" \t\n\r\u200b\ufeff\u00a0▁🙂𝔘é")
    rng = random.Random(1234)
    for n in range(3000):
        if n % 2:
            s = "".join(rng.choice(chars) for _ in range(rng.randint(1, 40)))
        else:
            i = rng.randrange(len(text))
            s = text[i:i + rng.randint(1, 80)]
            j = rng.randrange(len(s) + 1)
            s = s[:j] + rng.choice(chars) + s[j:]
        ids = ours.encode(s)
        assert hf.encode(s) == ids, repr(s)
        assert hf.decode(ids) == ours.decode(ids), repr(s)


def test_batch_encode_equals_encode(hf_dir, corpus_dir):
    """Preprocessing encodes a task's texts in one call (issue 19): the same ids as one by one."""
    tok = HFTokenizer(hf_dir)
    texts = TRICKY + corpus_texts(corpus_dir)[:20]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert [a.tolist() for a in tok.encode_arrays(texts)] == [tok.encode(t) for t in texts]


def test_special_tokens_and_no_bos(ours, hf, hf_dir):
    assert (hf.unk_token, hf.bos_token, hf.eos_token, hf.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 3)
    assert hf.eos_token_id == ours.eod and hf.convert_ids_to_tokens(4) == "\n"
    assert len(hf) == ours.vocab_size == 8000
    assert hf.model_max_length == 2048
    ids = ours.encode("สวัสดี hello")
    assert hf("สวัสดี hello")["input_ids"] == ids  # nothing added: no BOS, no EOS
    framed = [ours.bos] + ids + [ours.eod, ours.pad]
    assert hf.decode(framed, skip_special_tokens=True) == ours.decode(framed) == "สวัสดี hello"
    assert hf.decode(framed) == "<s>สวัสดี hello</s><pad>"
    cfg = json.load(open(os.path.join(hf_dir, "tokenizer_config.json")))
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["add_bos_token"] is False
    assert "auto_map" not in cfg
    with open(os.path.join(hf_dir, "tokenizer.model"), "rb") as f:
        assert f.read() == ours.model_bytes


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gpt2"])
def test_with_model_config(ours, tmp_path, model_type):
    """config.json's model_type steers AutoTokenizer in transformers 5: qwen2 would get a
    byte-level Qwen2Tokenizer rebuilt from our vocabulary without the auto_map."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 8000}))
    files = export_tokenizer(ours, str(tmp_path))
    assert (REMOTE_MODULE + ".py" in files) == (model_type == "qwen2")
    assert import_check(ours, str(tmp_path)) > 100
    assert import_check(ours, str(tmp_path), hf=load_hf(str(tmp_path), trust_remote_code=False)) > 100


def test_qwen2_with_trust_remote_code(ours, tmp_path, monkeypatch):
    """With trust_remote_code=True transformers imports the shipped subclass (into a module cache
    redirected here, not the user's)."""
    dm = pytest.importorskip("transformers.dynamic_module_utils")
    cache = str(tmp_path / "modules")
    monkeypatch.setattr(dm, "HF_MODULES_CACHE", cache)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 8000}))
    export_tokenizer(ours, str(out))
    try:
        hf = load_hf(str(out), trust_remote_code=True)
        assert type(hf).__name__ == "MegatronThTokenizer"
        assert import_check(ours, str(out), hf=hf) > 100
    finally:
        while cache in sys.path:
            sys.path.remove(cache)


def test_import_check_catches_a_wrong_pipeline(ours, hf_dir, tmp_path):
    import shutil

    import transformers

    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    tj = json.loads((bad / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["prepend_scheme"] = "always"  # a prefix space, as Llama adds one
    (bad / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ConversionError, match="differs from our encode at token 0"):
        import_check(ours, str(bad))
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5's LlamaTokenizer rebuilds its own pipeline instead of loading tokenizer.json
        shutil.rmtree(bad)
        shutil.copytree(hf_dir, bad)
        cfg = json.loads((bad / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "LlamaTokenizer"
        (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConversionError):
            import_check(ours, str(bad))


def test_hf_tokenizer_is_copied(ours, hf_dir, tmp_path):
    src = HFTokenizer(hf_dir)
    files = export_tokenizer(src, str(tmp_path / "out"), model_max_length=512)
    assert "tokenizer.json" in files and "tokenizer.model" in files
    cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 512
    assert import_check(src, str(tmp_path / "out")) > 100
    assert import_check(ours, str(tmp_path / "out")) > 100
    # exported next to a qwen2 config.json it still loads as the class training used
    q = tmp_path / "qwen2"
    q.mkdir()
    (q / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 8000}))
    assert REMOTE_MODULE + ".py" in export_tokenizer(src, str(q))
    assert import_check(src, str(q)) > 100


def test_piece_text(tokenizer_model):
    assert piece_text("▁foo") == " foo"
    assert piece_text("▁▁") == "  "
    assert piece_text("\n") == "\n"
    assert piece_text("ที่") == "ที่"
    assert piece_text("<0xE0>") is None and piece_bytes("<0xE0>") == b"\xe0" and piece_bytes("ab") is None
    assert piece_text("<s>", "control") is None and piece_text("<unk>", kind=2) is None
    assert piece_text("<s>", "user_defined") == "<s>"
    proto = load_model_proto(tokenizer_model)
    texts = [piece_text(p) for p in proto.pieces]
    assert texts[:5] == [None, None, None, None, "\n"] and texts[5] is None  # <0x00>
    assert texts[261] == proto.pieces[261].piece.replace("▁", " ")


# ---------------------------------------------------------------------------------------------
# vocabulary extension

def _train(out, inputs, vocab, model_type="bpe"):
    args = tt.build_parser().parse_args(["--input", *inputs, "--output", str(out), "--vocab-size", str(vocab),
                                         "--model-type", model_type, "--heldout-every", "0", "--quiet"])
    tt.train(args)
    return str(out)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, corpus_dir):
    """An English-only base (vocabulary 500), a Llama-like base (dummy prefix, no "\\n" piece, no
    Thai required) and a Thai model to add, trained with train_tokenizer's settings."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    c = lambda n: os.path.join(corpus_dir, n + ".jsonl")  # noqa: E731
    en = _train(d / "en.model", [c("en_misc")], 500)
    th = _train(d / "th.model", [c("th_wiki"), c("th_news"), c("th_story")], 2000)
    with open(c("en_misc"), encoding="utf-8") as f:
        en_lines = [ln for x in f for ln in json.loads(x)["text"].split("\n") if ln]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(en_lines), model_writer=model, vocab_size=500, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    llama = d / "llama_like" / "tokenizer.model"  # an HF directory holding tokenizer.model
    llama.parent.mkdir()
    llama.write_bytes(model.getvalue())
    return {"en": en, "th": th, "llama_dir": str(llama.parent), "dir": d}


def _cost(model, texts):
    return sum(map(len, SentencePieceTokenizer(model).encode_batch(texts)))


@pytest.mark.parametrize("base_key", ["en", "llama_dir"])
def test_extend_sentencepiece(tiny_models, corpus_dir, base_key, tmp_path):
    base, add = tiny_models[base_key], tiny_models["th"]
    out = str(tmp_path / "ext.model")
    logs = []
    summary = et.extend_sentencepiece(base, add, out, log=logs.append)
    base_proto = load_model_proto(et.resolve_model(base))
    add_proto, new = load_model_proto(add), load_model_proto(out)
    n = len(base_proto.pieces)
    # the first len(base) pieces are identical (piece, score, type): every old id unchanged
    triple = lambda p: (p.piece, p.score, p.type)  # noqa: E731
    assert [triple(p) for p in new.pieces[:n]] == [triple(p) for p in base_proto.pieces]
    assert summary["base_size"] == n and summary["vocab_size"] == len(new.pieces) == n + summary["added"]
    assert summary["added"] > 1000 and summary["unreachable"] == 0
    assert f"{summary['added']} added" in logs[0]
    have = {p.piece for p in base_proto.pieces}
    wanted = [p.piece for p in add_proto.pieces if p.type in (1, 4) and p.piece not in have]
    assert [p.piece for p in new.pieces[n:]] == wanted
    # appended normal pieces score below every base piece, in the add model's order
    scores = [p.score for p in new.pieces[n:] if p.type == 1]
    assert max(scores) < min(p.score for p in base_proto.pieces)
    assert scores == sorted(scores, reverse=True)
    assert new.trainer_spec.vocab_size == len(new.pieces) and not os.path.exists(out + ".tmp")
    # Thai costs far fewer tokens; English no more than before
    texts = corpus_texts(corpus_dir)
    thai = [t for t in texts if tt.script_of(t) == "thai"]
    english = [t for t in texts if tt.script_of(t) == "latin"]
    base_file = et.resolve_model(base)
    assert _cost(out, thai) < 0.5 * _cost(base_file, thai)
    assert _cost(out, thai) <= 1.02 * _cost(add, thai)  # about the Thai model's own segmentation
    assert _cost(out, english) <= _cost(base_file, english)
    # round trip, and the extended model exports to HF exactly
    tok = SentencePieceTokenizer(out)
    assert all(tok.decode(tok.encode(t)) == strip_invisible(t) for t in texts)
    export_tokenizer(tok, str(tmp_path / "hf"))
    assert import_check(tok, str(tmp_path / "hf"), texts=texts + TRICKY) > 50000


def test_extend_cli_and_errors(tiny_models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli.model"
    assert et.main(["--base", tiny_models["en"], "--add", tiny_models["th"], "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "added" in printed and "thai corpus" in printed and out.is_file()
    # not a sentencepiece model (a tiktoken file named tokenizer.model), or no model at all
    junk = tmp_path / "junk_dir"
    junk.mkdir()
    (junk / "tokenizer.model").write_bytes(b"IQ== 0\nIg== 1\n")  # tiktoken-style
    assert et.main(["--base", str(junk), "--add", tiny_models["th"], "--output", str(tmp_path / "x.model")]) == 1
    assert "not a sentencepiece model" in capsys.readouterr().err
    assert et.main(["--base", str(tmp_path), "--add", tiny_models["th"], "--output", str(tmp_path / "x.model")]) == 1
    assert "no tokenizer.model" in capsys.readouterr().err
    assert not (tmp_path / "x.model").exists()
    # without protobuf: one line naming the extra
    monkeypatch.setitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", None)
    with pytest.raises(ImportError, match=r"pip install megatron_th\[hf\]"):
        et.extend_sentencepiece(tiny_models["en"], tiny_models["th"], str(tmp_path / "y.model"))


def test_unigram_base_refused_and_unigram_export(tiny_models, corpus_dir, tmp_path):
    uni = _train(tmp_path / "uni.model", [os.path.join(corpus_dir, n + ".jsonl") for n in ("en_misc", "th_wiki")],
                 1500, model_type="unigram")
    with pytest.raises(ValueError, match="only BPE"):
        et.extend_sentencepiece(uni, tiny_models["th"], str(tmp_path / "z.model"))
    tok = SentencePieceTokenizer(uni)
    export_tokenizer(tok, str(tmp_path / "hf"))
    # (a byte piece's name typed in the text is the one known difference of unigram models: HF's
    # Unigram matches "<0x41>" as that piece, sentencepiece never matches byte pieces)
    texts = corpus_texts(corpus_dir) + [t for t in TRICKY if "<0x" not in t]
    assert import_check(tok, str(tmp_path / "hf"), texts=texts) > 30000
