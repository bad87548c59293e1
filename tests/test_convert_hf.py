"""Hugging Face conversion, both ways, proven on tiny random models (fp32, CPU):

- ours -> HF for every architecture (GQA/MHA/MQA, tied/untied, RoPE theta, head dim, QKV bias,
  all biases, GPT-2): `transformers` logits within 1e-4 of ours, greedy generation of 32 tokens
  identical, AutoTokenizer ids equal ours;
- HF -> ours for models `transformers` itself created and saved (Llama, Mistral, Qwen2, GPT-2):
  the same parity, then HF -> ours -> HF bitwise;
- streaming shards, errors. The newer families (Llama 3.x RoPE scaling, Qwen2.5, Qwen3, windows) and
  continued pretraining after import at TP 1 / TP 2 + SP / PP 2 are in tests/test_convert_families.py.
"""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="conversion tests need the [hf] extra")

from megatron_th.config import Config, finalize  # noqa: E402
from megatron_th.convert.from_hf import import_from_hf  # noqa: E402
from megatron_th.convert.hf_arch import ConversionError  # noqa: E402
from megatron_th.convert.hf_files import HFWeights  # noqa: E402
from megatron_th.convert.to_hf import export_to_hf  # noqa: E402
from megatron_th.data.tokenizer import SentencePieceTokenizer  # noqa: E402
from megatron_th.inference import generate, load_for_inference  # noqa: E402
from megatron_th.model.gpt import build_model  # noqa: E402
from megatron_th.training.resume import save_weights_only  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402
from tests.test_hf_tokenizer import _train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TEXT = "สวัสดีครับ ภาษาไทยเป็นภาษาที่มีวรรณยุกต์\nThe quick brown fox, 2024!\n\n  กรุงเทพมหานคร  ok"
QUIET = lambda *a, **k: None  # noqa: E731

BASE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 64,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "init_method_std": 0.1}
LLAMA = {"position_embedding_type": "rope", "normalization": "RMSNorm", "swiglu": True, "disable_bias_linear": True,
         "ffn_hidden_size": 96}
GPT2 = {"position_embedding_type": "learned_absolute", "normalization": "LayerNorm", "swiglu": False,
        "disable_bias_linear": False, "openai_gelu": True, "max_position_embeddings": 128}
VARIANTS = {  # name -> (our model fields, --architecture, HF class)
    "llama_gqa_tied": ({**LLAMA, "num_query_groups": 2}, None, "LlamaForCausalLM"),
    "llama_mha_untied_biases_theta_headdim": (
        {**LLAMA, "num_query_groups": 4, "untie_embeddings_and_output_weights": True, "disable_bias_linear": False,
         "rotary_base": 500000, "kv_channels": 32, "norm_epsilon": 1e-6}, None, "LlamaForCausalLM"),
    "qwen2_qkv_bias_untied": ({**LLAMA, "num_query_groups": 2, "add_qkv_bias": True,
                               "untie_embeddings_and_output_weights": True, "rotary_base": 1000000}, None,
                              "Qwen2ForCausalLM"),
    "mistral_mqa": ({**LLAMA, "num_query_groups": 1}, "mistral", "MistralForCausalLM"),
    "gpt2_tanh": (GPT2, None, "GPT2LMHeadModel"),
    "gpt2_erf": ({**GPT2, "openai_gelu": False, "ffn_hidden_size": 160}, None, "GPT2LMHeadModel"),
}


def _cfg(fields: dict) -> Config:
    cfg = Config()
    for k, v in {**BASE, **fields}.items():
        setattr(cfg.model, k, v)
    return finalize(cfg)


def _save_ours(tmp, name, fields, tokenizer_model, seed=7):
    cfg = _cfg(fields)
    vocab = SentencePieceTokenizer(tokenizer_model).vocab_size
    model = build_model(cfg.model, vocab, seed)
    ck = str(tmp / f"ck_{name}")
    save_weights_only(ck, 3, list(model.state_dict().items()), cfg.to_dict(), tokenizer_model)
    return ck, model.eval()


def _hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _tokens(vocab, seed=0):
    return torch.randint(5, vocab, (2, 40), generator=torch.Generator().manual_seed(seed))


def _hf_greedy(hf, prompt, n, eod, use_cache=True):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eod, pad_token_id=eod,
                      use_cache=use_cache)
    return out[0, len(prompt):].tolist()


def _assert_parity(ours, hf, tok, eod, rows=None, use_cache=True):
    """Logits of 2 x 40 random tokens within 1e-4 (``rows``: the model's vocabulary rows, default
    the tokenizer's), then 32 greedy tokens after a 12-token prompt identical (HF's generate with
    its KV cache, or recomputing every step without: ``use_cache``)."""
    with torch.no_grad():
        x = _tokens(tok.vocab_size)
        a, b = ours(tokens=x), hf(input_ids=x).logits
    assert a.shape == b.shape == (2, 40, rows or tok.vocab_size)
    diff = (a - b).abs().max().item()
    assert diff <= 1e-4, f"logits differ by {diff}"
    prompt = tok.encode(TEXT)[:12]
    mine = generate(ours, prompt, 32, eod=eod)
    theirs = _hf_greedy(hf, prompt, 32, eod, use_cache)
    assert mine == theirs
    assert len(mine) == 32 or mine[-1] == eod
    return diff


def _hf_tensors(path):
    w = HFWeights(path)
    return {n: w.get(n) for n in w.names()}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_ours_to_hf_to_ours(name, tmp_path, tokenizer_model):
    fields, arch, cls = VARIANTS[name]
    ck, ours = _save_ours(tmp_path, name, fields, tokenizer_model)
    out = str(tmp_path / "hf")
    summary = export_to_hf(ck, out, architecture=arch, log=QUIET)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == [cls] and config["vocab_size"] == 8000 and config["eos_token_id"] == 2
    hf = _hf_model(out)
    assert type(hf).__name__ == cls
    tok = SentencePieceTokenizer(tokenizer_model)
    _assert_parity(ours, hf, tok, tok.eod)
    auto = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert auto(TEXT)["input_ids"] == tok.encode(TEXT)
    assert auto.decode(tok.encode(TEXT)) == TEXT and auto.eos_token_id == tok.eod
    # and back: HF -> ours gives our weights bitwise, and ours -> HF the same files bitwise
    back = str(tmp_path / "back")
    import_from_hf(out, back, log=QUIET)
    model2, tok2, _ = load_for_inference(back)
    assert tok2.encode(TEXT) == tok.encode(TEXT)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), model2.named_parameters()):
        assert n1 == n2
        v = tok.vocab_size
        assert torch.equal(p1[:v] if "word_emb" in n1 or "output_layer" in n1 else p1,
                           p2[:v] if "word_emb" in n2 or "output_layer" in n2 else p2), n1
    again = str(tmp_path / "again")
    export_to_hf(back, again, architecture=arch, log=QUIET)
    t1, t2 = _hf_tensors(out), _hf_tensors(again)
    assert t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert summary["tensors"] == len(t1)


def _native(kind, tok):
    """A tiny model created and saved by transformers itself."""
    common = {"vocab_size": tok.vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
              "initializer_range": 0.1}
    llama = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, **common}
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama, tie_word_embeddings=False,
                                                                      rope_theta=50000.0))
    if kind == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**llama, sliding_window=None,
                                                                          tie_word_embeddings=True))
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama, tie_word_embeddings=True))
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **common))


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory, tokenizer_model):
    from megatron_th.convert.hf_tokenizer import export_tokenizer

    d = tmp_path_factory.mktemp("hf_tok")
    export_tokenizer(SentencePieceTokenizer(tokenizer_model), str(d))
    return str(d)


def _save_model(hf, path, tok_dir, **save_kw):
    """``save_pretrained(path, **save_kw)`` with the tokenizer files of ``tok_dir`` beside."""
    import shutil

    hf.save_pretrained(path, **save_kw)
    for f in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, f), path)
    return path


def _save_native(kind, tmp, tok, tok_dir, seed=11):
    torch.manual_seed(seed)
    hf = _native(kind, tok).eval()
    return hf, _save_model(hf, str(tmp / f"native_{kind}"), tok_dir)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral", "qwen2"])
def test_hf_to_ours_to_hf(kind, tmp_path, tokenizer_model, hf_tokenizer_dir):
    tok = SentencePieceTokenizer(tokenizer_model)
    hf, path = _save_native(kind, tmp_path, tok, hf_tokenizer_dir)
    ck = str(tmp_path / "ck")
    import_from_hf(path, ck, log=QUIET)
    ours, tok2, cfg = load_for_inference(ck)
    assert tok2.encode(TEXT) == tok.encode(TEXT)
    _assert_parity(ours, hf, tok, tok.eod)
    out = str(tmp_path / "out")
    export_to_hf(ck, out, architecture="mistral" if kind == "mistral" else None, log=QUIET)
    t1, t2 = _hf_tensors(path), _hf_tensors(out)
    t1 = {k: v for k, v in t1.items() if not (k == "lm_head.weight" and cfg.model.untie_embeddings_and_output_weights is False)}
    assert t1.keys() == t2.keys()
    bad = [k for k in t1 if not torch.equal(t1[k], t2[k])]
    assert not bad, f"not bitwise equal after HF -> ours -> HF: {bad[:5]}"


def test_generate_tool_matches_transformers(tmp_path, tokenizer_model, capsys):
    """tools/generate.py on the imported checkpoint prints the ids HF's generate produces."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import generate as gen_tool

    ck, ours = _save_ours(tmp_path, "tool", VARIANTS["llama_gqa_tied"][0], tokenizer_model)
    out = str(tmp_path / "hf")
    export_to_hf(ck, out, log=QUIET)
    prompt = "กรุงเทพมหานคร"
    assert gen_tool.main(["--load", ck, "--prompt", prompt, "--max-new-tokens", "32", "--ids"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    auto = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = auto(prompt)["input_ids"]
    assert printed == _hf_greedy(_hf_model(out), ids, 32, auto.eos_token_id)


def test_streaming_shards_and_index(tmp_path, tokenizer_model):
    ck, _ = _save_ours(tmp_path, "shards", VARIANTS["llama_gqa_tied"][0], tokenizer_model)
    out = str(tmp_path / "hf")
    limit = 60_000
    s = export_to_hf(ck, out, max_shard_bytes=limit, log=QUIET)
    shards = [f for f in s["files"] if f.endswith(".safetensors")]
    assert len(shards) >= 3 and "model.safetensors.index.json" in s["files"]
    biggest = 8000 * 64 * 4  # the embedding, the largest single tensor
    assert s["peak_shard_bytes"] <= max(limit, biggest)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == s["bytes"]
    _hf_model(out)  # loads through the index


def test_clear_errors(tmp_path, tokenizer_model, hf_tokenizer_dir):
    tok = SentencePieceTokenizer(tokenizer_model)
    _, path = _save_native("llama", tmp_path, tok, hf_tokenizer_dir)
    cfg_path = os.path.join(path, "config.json")
    good = json.load(open(cfg_path))
    json.dump({**good, "model_type": "bert", "architectures": ["BertModel"]}, open(cfg_path, "w"))
    with pytest.raises(ConversionError, match="model_type 'bert'.*supported: gemma3, gemma3_text, gpt2, llama, mistral, qwen2, qwen3"):
        import_from_hf(path, str(tmp_path / "x"), log=QUIET)
    json.dump({**good, "rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, open(cfg_path, "w"))
    with pytest.raises(ConversionError, match="RoPE scaling 'yarn'"):
        import_from_hf(path, str(tmp_path / "x"), log=QUIET)
    json.dump({**good, "vocab_size": 7000}, open(cfg_path, "w"))
    # a tokenizer larger than the embedding
    from safetensors.torch import load_file, save_file

    wfile = os.path.join(path, "model.safetensors")
    w = load_file(wfile)
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"][:7000].clone()
    w["lm_head.weight"] = w["lm_head.weight"][:7000].clone()
    save_file(w, wfile, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="tokenizer has 8000 tokens but the embedding .* has only 7000 rows"):
        import_from_hf(path, str(tmp_path / "x"), log=QUIET)
    json.dump(good, open(cfg_path, "w"))
    with pytest.raises(ConversionError, match="config.json says vocab_size 8000 but model.embed_tokens.weight has 7000"):
        import_from_hf(path, str(tmp_path / "x"), log=QUIET)
    # export: a checkpoint whose stored tokenizer does not fit the embedding
    ck, _ = _save_ours(tmp_path, "err", VARIANTS["llama_gqa_tied"][0], tokenizer_model)
    iter_dir = os.path.join(ck, "iter_0000003")
    import shutil

    shutil.copy(_train(tmp_path / "small.model", [os.path.join(CORPUS, "en_misc.jsonl")], 500),
                os.path.join(iter_dir, "tokenizer.model"))
    with pytest.raises(ConversionError, match="wrong tokenizer for this checkpoint"):
        export_to_hf(ck, str(tmp_path / "y"), log=QUIET)
    # not a model this architecture holds; an existing output is not clobbered
    ck2, _ = _save_ours(tmp_path, "ln_rope", {**LLAMA, "normalization": "LayerNorm"}, tokenizer_model)
    with pytest.raises(ConversionError, match="no Hugging Face architecture computes this model"):
        export_to_hf(ck2, str(tmp_path / "z"), log=QUIET)
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "keep.txt").write_text("x")
    ck3, _ = _save_ours(tmp_path, "ok", VARIANTS["llama_gqa_tied"][0], tokenizer_model)
    with pytest.raises(ConversionError, match="exists and is not empty"):
        export_to_hf(ck3, str(tmp_path / "full"), log=QUIET)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_cli_one_line_error(tmp_path, capsys):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import convert_from_hf
    import convert_to_hf

    assert convert_from_hf.main(["--hf", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no config.json" in err
    assert convert_to_hf.main(["--load", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no complete checkpoint" in err


def test_extend_vocab_on_import(tmp_path, hf_tokenizer_dir):
    """An English-only Llama gets the Thai pieces of a merged tokenizer: old rows stay bitwise,
    each new row is the mean of the rows of the old pieces the OLD tokenizer splits it into
    (checked against sentencepiece itself), old-token logits are unchanged, Thai gets shorter."""
    import shutil

    from megatron_th.convert.hf_tokenizer import export_tokenizer, piece_text
    from megatron_th.data.extend_tokenizer import extend_sentencepiece

    en = _train(tmp_path / "en.model", [os.path.join(CORPUS, "en_misc.jsonl")], 500)
    th = _train(tmp_path / "th.model", [os.path.join(CORPUS, n + ".jsonl") for n in ("th_wiki", "th_news")], 1500)
    new_model = str(tmp_path / "th_ext.model")
    extend_sentencepiece(en, th, new_model, log=QUIET)
    old, new = SentencePieceTokenizer(en), SentencePieceTokenizer(new_model)
    tok_dir = tmp_path / "en_tok"
    export_tokenizer(old, str(tok_dir))
    hf, path = _save_native("llama", tmp_path, old, str(tok_dir))
    logs = []
    summary = import_from_hf(path, str(tmp_path / "ck"), extend_vocab=new_model, log=logs.append)
    added = new.vocab_size - old.vocab_size
    assert summary["added_tokens"] == added > 300 and any(f"{added} tokens added" in line for line in logs)
    ours, tok, _ = load_for_inference(str(tmp_path / "ck"))
    assert tok.vocab_size == new.vocab_size
    hf_emb, hf_head = hf.model.embed_tokens.weight.detach(), hf.lm_head.weight.detach()
    emb, head = ours.embedding.word_embeddings.weight.detach(), ours.output_layer.weight.detach()
    n = old.vocab_size
    assert torch.equal(emb[:n], hf_emb) and torch.equal(head[:n], hf_head)
    checked = 0
    for j in range(n, new.vocab_size):
        text = piece_text(new.id_to_piece(j))
        if not text or new.sp.is_byte(j):
            continue
        ids = old.encode(text)  # what the old tokenizer makes of the new token's text
        torch.testing.assert_close(emb[j], hf_emb[ids].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(head[j], hf_head[ids].mean(0), rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 0.95 * added
    x = torch.randint(5, n, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens=x)[..., :n], hf(input_ids=x).logits, rtol=0, atol=1e-4)
    thai = "ภาษาไทยเป็นภาษาที่มีวรรณยุกต์และใช้อักษรไทย"
    assert len(new.encode(thai)) < 0.6 * len(old.encode(thai))
    shutil.rmtree(tmp_path / "ck")
    with pytest.raises(ConversionError, match="piece .* the new model must keep every old piece"):
        import_from_hf(path, str(tmp_path / "ck"), extend_vocab=th, log=QUIET)


def test_import_reads_pytorch_bin_without_unpickling_code(tmp_path, tokenizer_model, hf_tokenizer_dir):
    """An old-style pytorch_model.bin (GPT-2 names without "transformer.", with the attn.bias mask
    buffers) imports like safetensors; it is read with weights_only=True."""
    tok = SentencePieceTokenizer(tokenizer_model)
    hf, path = _save_native("gpt2", tmp_path, tok, hf_tokenizer_dir)
    os.remove(os.path.join(path, "model.safetensors"))
    state = {k[len("transformer."):]: v for k, v in hf.state_dict().items() if k.startswith("transformer.")}
    state.update({f"h.{i}.attn.bias": torch.ones(1, 1, 128, 128) for i in range(2)})
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    ck = str(tmp_path / "ck")
    import_from_hf(path, ck, log=QUIET)
    ours, _, _ = load_for_inference(ck)
    x = _tokens(tok.vocab_size)
    with torch.no_grad():
        assert (ours(tokens=x) - hf(input_ids=x).logits).abs().max() <= 1e-4

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"wte.weight": Evil()}, os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(ConversionError, match="refused by torch.load.weights_only=True"):
        import_from_hf(path, str(tmp_path / "ck2"), log=QUIET)
