"""Issue 15, conversion: Llama 3.x RoPE scaling, Qwen2.5, dense Qwen3 and sliding windows (Mistral,
Qwen2/Qwen3), HF -> ours -> HF, on tiny random models that transformers itself creates and saves,
several with config.json edited by hand into the shapes the Hub ships (and read back by
transformers, which is the reference the parity runs against):

- logits within 1e-4 (fp32) of transformers, 32 greedy tokens identical;
- the export of the import: every tensor bitwise, config.json and generation_config.json equal to
  the base's, tokenizer files (chat template included) byte for byte; a config generated instead
  (``fresh_config``) reads in transformers as the base's does;
- embeddings with more rows than the tokenizer has tokens (Qwen2.5) keep every row;
- after import, 5 training steps give the same losses at TP 1, TP 2 + SP and PP 2, TP 2 gradients of
  the Qwen3 q/k-norm weights equal TP 1's, the trained checkpoint's export matches transformers; the
  same for the Gemma 3 of tests/test_convert_gemma3.py (4 steps), in the same 2-process launch;
- refused configs name the key; ``--help`` lists the families and the refusals;
- tools/preprocess_data.py with a Qwen-style ``hf:`` tokenizer appends its ``<|endoftext|>`` as EOD
  (it already did: that test pins the behaviour the issue asks for).
"""
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="conversion tests need the [hf] extra")

from megatron_th.convert import families  # noqa: E402
from megatron_th.convert.from_hf import import_from_hf  # noqa: E402
from megatron_th.convert.hf_arch import ConversionError  # noqa: E402
from megatron_th.convert.hf_tokenizer import HF_TOKENIZER_FILES  # noqa: E402
from megatron_th.convert.to_hf import export_to_hf  # noqa: E402
from megatron_th.data.tokenizer import load_tokenizer  # noqa: E402
from megatron_th.inference import load_for_inference  # noqa: E402
from tests import dist as D  # noqa: E402
from tests import test_convert_gemma3 as G3  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402
from tests.test_convert_hf import QUIET, _assert_parity, _hf_model, _hf_tensors, _save_model  # noqa: E402
from tests.test_convert_gemma3 import causal, tokenizer_files  # noqa: E402,F401 (fixtures: its Gemma 3)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

S, F = "sliding_attention", "full_attention"
SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "initializer_range": 0.1}
QWEN_ROWS = 736  # > the Qwen-style tokenizer's 703 tokens, and not a multiple of 128 (padded to 768)


def _hub_rope(c):
    """The Hub's older RoPE shape: top-level rope_theta, rope_scaling (null for plain RoPE)."""
    p = dict(c.pop("rope_parameters"))
    c["rope_theta"] = p.pop("rope_theta")
    c["rope_scaling"] = p if p.get("rope_type", "default") != "default" else None


def _llama31(c):  # Meta-Llama-3.1-8B's config.json shape
    _hub_rope(c)


def _linear_type_key(c):  # older files: rope_scaling {"type": "linear", "factor": ...}
    _hub_rope(c)
    c["rope_scaling"] = {"type": "linear", "factor": c["rope_scaling"]["factor"]}


def _qwen25(c):  # Qwen2.5-0.5B/1.5B/3B's config.json shape
    _hub_rope(c)
    del c["layer_types"], c["dtype"]
    c.update(sliding_window=131072, use_sliding_window=False, max_window_layers=21, torch_dtype="bfloat16",
             use_mrope=False)


def _qwen2_windows(c):  # a Qwen2-era file: no layer_types, the window from max_window_layers
    del c["layer_types"]


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64, "rope_theta": 500000.0}
# name -> (transformers class, config, hand edit of config.json, ModelConfig fields the import must read); every
# family gets the byte-level BPE tokenizer below (Llama 3 and Qwen ship one; sentencepiece: test_convert_hf.py)
FAMILIES = {
    "llama3.1_hub": ("LlamaForCausalLM", {**SMALL, "head_dim": 32, "tie_word_embeddings": False,
                                          "rope_parameters": LLAMA3}, _llama31,
                     {"use_rope_scaling": True, "rope_scaling_type": "llama3", "rope_scaling_factor": 8.0,
                      "rope_scaling_original_max_position_embeddings": 64, "rotary_base": 500000, "kv_channels": 32,
                      "num_query_groups": 2}),
    "llama3.2_tied": ("LlamaForCausalLM", {**SMALL, "num_key_value_heads": 4, "tie_word_embeddings": True,
                                           "rope_parameters": {**LLAMA3, "factor": 32.0,
                                                               "original_max_position_embeddings": 16}}, None,
                      {"rope_scaling_factor": 32.0, "rope_scaling_original_max_position_embeddings": 16,
                       "untie_embeddings_and_output_weights": False}),
    "llama_linear_biases": ("LlamaForCausalLM", {**SMALL, "attention_bias": True, "mlp_bias": True,
                                                 "rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                                     "rope_theta": 10000.0}}, _linear_type_key,
                            {"rope_scaling_type": "linear", "rope_scaling_factor": 4.0, "disable_bias_linear": False}),
    "llama_dynamic": ("LlamaForCausalLM", {**SMALL, "max_position_embeddings": 32,
                                           "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                               "rope_theta": 10000.0}}, None,
                      {"rope_scaling_type": "dynamic", "max_position_embeddings": 32}),
    "qwen2.5_hub": ("Qwen2ForCausalLM", {**SMALL, "vocab_size": QWEN_ROWS, "tie_word_embeddings": True,
                                         "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}, _qwen25,
                    {"add_qkv_bias": True, "vocab_size": QWEN_ROWS, "window_size": None,
                             "rotary_base": 1000000}),
    "qwen2_windows": ("Qwen2ForCausalLM", {**SMALL, "use_sliding_window": True, "sliding_window": 7,
                                           "max_window_layers": 1}, _qwen2_windows,
                      {"window_size": 7, "layer_types": [F, S]}),
    "qwen3_windows": ("Qwen3ForCausalLM", {**SMALL, "vocab_size": QWEN_ROWS, "head_dim": 24,
                                           "use_sliding_window": True, "sliding_window": 6, "layer_types": [S, F],
                                           "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
                      None, {"qk_layernorm": True, "kv_channels": 24, "window_size": 6, "layer_types": [S, F],
                                     "add_qkv_bias": False, "vocab_size": QWEN_ROWS}),
    "mistral_window": ("MistralForCausalLM", {**SMALL, "num_key_value_heads": 1, "head_dim": 32, "sliding_window": 5},
                       None, {"window_size": 5, "layer_types": None, "num_query_groups": 1}),
}


@pytest.fixture(scope="module")
def qwen_tokenizer_dir(tmp_path_factory):
    """A Qwen-style tokenizer: byte-level BPE (700 entries, trained here) + <|endoftext|> (eos, pad),
    <|im_start|>, <|im_end|> after it, a chat template; 703 tokens, as Qwen2.5's 151643 + 22."""
    import glob

    from tokenizers import ByteLevelBPETokenizer

    texts = [json.loads(line)["text"] for f in sorted(glob.glob(os.path.join(CORPUS, "*.jsonl")))
             for line in open(f, encoding="utf-8")]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=700, min_frequency=2, show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None,
                                      additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    d = str(tmp_path_factory.mktemp("qwen_tok"))
    tok.save_pretrained(d)
    assert len(tok) == 703 and tok.eos_token_id == 700
    return d


def _perturb(hf):
    """Norm gains away from 1 and biases away from 0, so that a mismapped one shows in the logits."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, qwen_tokenizer_dir):
    """name -> (HF directory, tokenizer): the FAMILIES model, created by transformers, saved with the
    byte-level BPE tokenizer, its config.json edited by hand where the entry says; made once."""
    made = {}
    tok = load_tokenizer("hf:" + qwen_tokenizer_dir)

    def make(name):
        if name not in made:
            cls, config, edit, _ = FAMILIES[name]
            ids = {"bos_token_id": None, "eos_token_id": tok.eod, "pad_token_id": tok.pad}
            klass = getattr(transformers, cls)
            torch.manual_seed(11)
            hf = klass(klass.config_class(**{"vocab_size": tok.vocab_size, **ids, **config})).eval()
            _perturb(hf)
            # in shards with an index, as the Hub's larger models: import reads one tensor at a time
            path = _save_model(hf, str(tmp_path_factory.mktemp(name.replace(".", "_"))), qwen_tokenizer_dir,
                               max_shard_size="300KB")
            assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
            assert os.path.isfile(os.path.join(path, "generation_config.json"))
            if edit is not None:
                cfg_path = os.path.join(path, "config.json")
                c = json.load(open(cfg_path))
                edit(c)
                json.dump(c, open(cfg_path, "w"), indent=2)
            made[name] = (path, tok)
        return made[name]

    return make


def _read(path, name):
    with open(os.path.join(path, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hf_to_ours_to_hf(name, saved, tmp_path):
    """Import reads the fields transformers reads, computes its logits and greedy tokens, and the
    export gives back every tensor bitwise with the base's configs and tokenizer files."""
    path, tok = saved(name)
    expect = FAMILIES[name][3]
    hf = _hf_model(path)  # transformers reads the (hand-edited) config: the reference
    ck = str(tmp_path / "ck")
    import_from_hf(path, ck, log=QUIET)
    ours, tok2, cfg = load_for_inference(ck)
    got = {k: getattr(cfg.model, k) for k in expect}
    assert got == expect
    rows = hf.config.vocab_size
    assert ours.vocab_size == rows and tok2.vocab_size == tok.vocab_size
    _assert_parity(ours, hf, tok, tok.eod, rows=rows, use_cache=name != "llama_dynamic")
    out = str(tmp_path / "out")
    summary = export_to_hf(ck, out, log=QUIET)
    assert summary["base_config"] and summary["vocab_size"] == rows
    t1, t2 = _hf_tensors(path), _hf_tensors(out)
    assert t1.keys() == t2.keys()
    assert [k for k in t1 if not torch.equal(t1[k], t2[k])] == []
    for f in ("config.json", "generation_config.json"):
        assert json.loads(_read(out, f)) == json.loads(_read(path, f)), f
    tok_files = [f for f in HF_TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))]
    assert "chat_template.jinja" in tok_files and all(_read(out, f) == _read(path, f) for f in tok_files)
    # a config generated from our options instead reads in transformers as the base's does
    fresh = str(tmp_path / "fresh")
    export_to_hf(ck, fresh, fresh_config=True, log=QUIET)

    def read(d):
        return families.read_config(transformers.AutoConfig.from_pretrained(d).to_dict(), d, QUIET)[2]

    assert read(fresh) == read(path)


def test_preprocess_appends_the_bases_end_of_text(saved, tmp_path):
    """tools/preprocess_data.py --tokenizer-model hf:<Qwen2.5 dir> --append-eod ends every document
    with the base's own <|endoftext|> (its eos_token), after exactly the tokenizer's ids."""
    from megatron_th.data import preprocess
    from megatron_th.data.indexed import IndexedDataset

    path, _ = saved("qwen2.5_hub")
    auto = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    texts = ["สวัสดีครับ hello", "The quick brown fox.\n\nภาษาไทย"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    prefix = str(tmp_path / "qwen")
    preprocess.run(preprocess.build_parser().parse_args(
        ["--input", str(src), "--tokenizer-model", "hf:" + path, "--output-prefix", prefix, "--append-eod",
         "--quiet"]), log=QUIET)
    ds = IndexedDataset(prefix + "_text_document")
    eot = auto.convert_tokens_to_ids("<|endoftext|>")
    assert eot == 700 and [list(ds[i]) for i in range(2)] == [auto.encode(t) + [eot] for t in texts]


def test_continued_pretraining_from_import_at_any_layout(saved, causal, tmp_path):  # noqa: F811 (a fixture)
    """The imported Qwen3 (QK-norm, a window shorter than the sequence, head_dim != h / heads, GQA,
    rows beyond its tokenizer) trains with --load --use-checkpoint-args and its stored HF tokenizer:
    5 steps give the same losses at TP 1, TP 2 + SP and PP 2; the TP 2 q/k-norm gradients equal
    TP 1's; the trained checkpoint still starts from the import and exports to what transformers
    computes, with the base's config.json. The imported Gemma 3 of tests/test_convert_gemma3.py
    (sequence 32 > window 5; the window and local RoPE of layer 2 on the second pipeline stage):
    4 steps give the TP 1 losses at TP 2 + SP and PP 2 (layers 2 + 1), and its TP 2 QK-norm
    gradients equal TP 1's. Both families run in one launch of two processes."""
    from tests.test_tensor_parallel import _data

    path, tok = saved("qwen3_windows")
    data = _data(tmp_path)
    ck, trained = str(tmp_path / "ck"), str(tmp_path / "trained")
    import_from_hf(path, ck, seq_length=32, log=QUIET)
    argv = ["--data-path", data, "--data-cache-path", str(tmp_path / "cache"), "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "5", "--lr", "1e-3",
            "--num-threads", "1", "--eval-iters", "0", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--peak-tflops", "1", "--load", ck, "--use-checkpoint-args"]  # peak given: no CPU matmul benchmark
    tokens = torch.randint(5, tok.vocab_size, (2, 33), generator=torch.Generator().manual_seed(2))
    jobs = {"qwen3": (argv, [], ck, tokens), "gemma3": G3.training_job(causal[1], tmp_path, data)}
    tp1 = {"qwen3": G3.train_losses(argv + ["--save", trained]), "gemma3": G3.train_losses(jobs["gemma3"][0])}
    par = D.run(G3.layouts_body, 2, jobs, timeout=480)[0]
    assert len(tp1["qwen3"]) == 5 and len(tp1["gemma3"]) == 4 and tp1["gemma3"][-1] < tp1["gemma3"][0]
    for name in jobs:
        for layout in ("tp2_sp", "pp2"):
            np.testing.assert_allclose(par[name][layout], tp1[name], rtol=1e-5, atol=0, err_msg=f"{name} {layout}")
        ref = G3.qk_norm_grads(jobs[name][2], jobs[name][3], 1)
        assert sorted(ref) == sorted(par[name]["qk_grads"]) and len(ref) == {"qwen3": 4, "gemma3": 6}[name]
        for n, g in ref.items():
            assert g.abs().max() > 0
            scale = g.abs().max().item()  # summed over 64 tokens: elements near 0 carry the sum's rounding
            torch.testing.assert_close(torch.tensor(par[name]["qk_grads"][n]), g, rtol=1e-5, atol=1e-5 * scale,
                                       msg=f"{name} {n}")
    # training started from the import: embedding rows no token reaches only decayed
    ours, _, cfg = load_for_inference(trained)
    emb = _hf_tensors(path)["model.embed_tokens.weight"]
    torch.testing.assert_close(ours.embedding.word_embeddings.weight.detach()[tok.vocab_size:QWEN_ROWS],
                               emb[tok.vocab_size:], rtol=1e-4, atol=0)
    out = str(tmp_path / "out")
    export_to_hf(trained, out, log=QUIET)
    assert json.loads(_read(out, "config.json")) == json.loads(_read(path, "config.json"))
    _assert_parity(ours, _hf_model(out), tok, tok.eod, rows=QWEN_ROWS)


REFUSED = {  # name -> (config edit of a small Llama / Qwen config, error pattern); yarn: test_convert_hf.py
    "qwen3_moe": ({"model_type": "qwen3_moe", "num_experts": 8}, "model_type 'qwen3_moe'.*Mixture-of-Experts"),
    "mixtral": ({"model_type": "mixtral"}, "model_type 'mixtral'.*Mixture-of-Experts"),
    "experts_key": ({"num_local_experts": 8}, "num_local_experts 8: Mixture-of-Experts"),
    "llama3_partial": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                       "'llama3' .rope_scaling. needs low_freq_factor, high_freq_factor"),
    "partial_rotary": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    "qwen3_attention_bias": ({"model_type": "qwen3", "attention_bias": True}, "attention_bias true .* qwen3"),
    "window_without_size": ({"model_type": "qwen2", "layer_types": [S, F]}, "need a sliding_window >= 1, got None"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_name(name):
    edit, pattern = REFUSED[name]
    c = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
         "intermediate_size": 96, **edit}
    with pytest.raises(ConversionError, match=pattern):
        families.read_config(c, "config.json", QUIET)


def test_config_shapes_read_as_transformers_reads_them():
    """Keys config.json leaves out take the config class's defaults; null means none."""
    small = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 96}
    read = lambda c: families.read_config(c, "config.json", QUIET)[2]  # noqa: E731
    assert read({"model_type": "mistral", **small})["window_size"] == 4096  # MistralConfig.sliding_window
    assert read({"model_type": "mistral", "sliding_window": None, **small})["window_size"] is None
    assert read({"model_type": "qwen3", **small})["kv_channels"] == 128  # Qwen3Config.head_dim
    assert read({"model_type": "qwen2", **small})["kv_channels"] == 16
    qwen = {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8, **small, "num_hidden_layers": 30}
    assert read(qwen)["layer_types"] == [F] * 28 + [S] * 2  # max_window_layers 28 by default
    top = {"model_type": "llama", **small, "original_max_position_embeddings": 256,
           "rope_scaling": {**LLAMA3, "original_max_position_embeddings": 64}}
    fields = read(top)
    assert fields["rope_scaling_original_max_position_embeddings"] == 256  # the top-level key wins, as in:
    from megatron_th.model.rope import inv_frequencies
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    theirs = LlamaRotaryEmbedding(transformers.LlamaConfig.from_dict(top)).inv_freq
    ours = inv_frequencies(16, fields["rotary_base"], "llama3", 8.0, 1.0, 4.0, 256).float()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_help_lists_families_and_refusals(capsys):
    """--help names every family, every model_type refused by name and every refused feature (that its
    example names an accepted model: tests/test_resume_changes.py)."""
    from megatron_th.cli.convert_from_hf import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    types = [t for mod in families.modules() for t in mod.MODEL_TYPES]
    for word in (*types, *families.REFUSED, "Gemma 3", "llama3", "Mixture-of-Experts", "yarn", "longrope",
                 "partial_rotary_factor", "mlp_bias", "attention_bias", "hidden_act", "gelu_fast",
                 "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "softcapping", "use_bidirectional_attention",
                 "sliding_window", "model.safetensors.index.json"):
        assert word in text, word
