"""Gemma 3 text conversion (megatron_th/convert/families/gemma3.py) on tiny random models
transformers itself creates and saves: Gemma3ForCausalLM, and the text tower of
Gemma3ForConditionalGeneration (tiny SigLIP vision tower, config.json edited into the Hub's 4B
shape), with every non-default value the family allows: head_dim != hidden / heads, GQA, a
sliding window (5) shorter than the test sequence, sliding and full layers interleaved, linear
RoPE scaling (factor 8) on the full layers with their own theta and another theta on the sliding
layers, query_pre_attn_scalar != head_dim, 8003 embedding rows (not a multiple of 128, more than
the tokenizer's 8000), norm weights away from 0 so the (1 + w) gains matter (each of these
options changes the logits by more than the 1e-4 tolerance).

Proof: logits within 1e-4 (fp32) of transformers, 32 greedy tokens identical; ours -> HF bitwise
for every tensor; tools/convert_from_hf.py -> tools/convert_to_hf.py gives back every stored
tensor bitwise and the base's config.json (a multimodal base as its text-only Gemma3ForCausalLM);
the config we generate reads in transformers as the one it saved; the Hub's older config shapes
are read as transformers reads them; inexact configs are refused by name; after import, training
losses at TP 2 + SP and PP 2 equal TP 1's and the TP 2 QK-norm gradients equal TP 1's (checked by
tests/test_convert_families.py in one launch with Qwen3's, with the rank code below).
"""
import importlib.util
import json
import os
import shutil
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_th.config import Config, finalize
from megatron_th.convert.families import gemma3 as G
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.data.tokenizer import padded_vocab_size
from megatron_th.inference import generate
from megatron_th.model.gpt import GPTModel

# transformers is imported inside the tests: the spawned training ranks import this module and need
# none of it (it costs each rank seconds)
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                 reason="conversion tests need the [hf] extra"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py: tiny models run faster on one thread

S, F = "sliding_attention", "full_attention"
TEXT = {"vocab_size": 8003, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 20,
        "sliding_window": 5, "layer_types": [S, F, S], "max_position_embeddings": 512, "initializer_range": 0.05,
        "rope_parameters": {F: {"rope_type": "linear", "factor": 8.0, "rope_theta": 500000.0},
                            S: {"rope_type": "default", "rope_theta": 20000.0}}}
# the same text model as the Hub's configs write it (transformers 4.50: gemma-3-1b's top-level keys,
# the 4B/12B/27B text_config's rope_scaling); layer_types [S, F, S] is sliding_window_pattern 2
HUB_ROPE = {"rope_theta": 500000.0, "rope_local_base_freq": 20000.0, "sliding_window_pattern": 2,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}
QUIET = lambda *a, **k: None  # noqa: E731


def _hub_shape(t: dict) -> dict:
    return {**{k: v for k, v in t.items() if k not in ("layer_types", "rope_parameters")}, **HUB_ROPE}


def _perturb_norms(hf):
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n and "vision" not in n:
                p.normal_(0.0, 1.0)


def _ours(c: dict, state: dict, prefix: str):
    """Our model from an HF config dict and state dict (names under ``prefix``), via the rules."""
    fields = G.fields_from_hf(c, "config.json", QUIET)
    cfg = Config()
    init = c.get("initializer_range", 0.02)  # as convert/from_hf.py carries it
    for k, v in {**fields, "seq_length": 64, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                 "init_method_std": init}.items():
        setattr(cfg.model, k, v)
    m = finalize(cfg).model
    vocab = fields["vocab_size"]
    padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
    plan = G.rules(m, vocab, padded)
    ours = GPTModel(m, vocab)
    loaded = {n: t for r in plan for n, t in zip(r.ours, r.from_hf([state[G.hf_name(h, prefix)] for h in r.hf]))}
    ours.load_state_dict(loaded, strict=True)
    return ours.eval(), m, plan, vocab


def _assert_parity(ours, hf, vocab):
    x = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(tokens=x), hf(input_ids=x).logits
    assert a.shape == b.shape == (2, 40, vocab)
    diff = (a - b).abs().max().item()
    assert diff <= 1e-4, f"logits differ by {diff}"
    prompt = x[0, :12].tolist()
    mine = generate(ours, prompt, 32, eod=1)
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=1,
                         pad_token_id=0)[0, 12:].tolist()
    assert mine == theirs and len(set(mine)) > 4
    return a


def _to_hf(ours, plan) -> dict:
    state = ours.state_dict()
    return {h: t for r in plan for h, t in zip(r.hf, r.to_hf([state[o] for o in r.ours]))}


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, tokenizer_model):
    """Our 8000-piece test tokenizer as HF tokenizer files (the HF models have 8003 embedding rows)."""
    from megatron_th.convert.hf_tokenizer import export_tokenizer
    from megatron_th.data.tokenizer import SentencePieceTokenizer

    d = tmp_path_factory.mktemp("gemma3_tokenizer")
    export_tokenizer(SentencePieceTokenizer(tokenizer_model), str(d))
    return [str(p) for p in d.iterdir()]


def _with_tokenizer(path, files):
    for f in files:
        shutil.copy(f, path)


@pytest.fixture(scope="module")
def causal(one_thread, tmp_path_factory, tokenizer_files):
    import transformers

    torch.manual_seed(5)
    hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**TEXT)).eval()
    _perturb_norms(hf)
    path = str(tmp_path_factory.mktemp("gemma3_causal"))
    hf.save_pretrained(path)
    _with_tokenizer(path, tokenizer_files)
    return hf, path


@pytest.fixture(scope="module")
def multimodal(one_thread, tmp_path_factory, tokenizer_files):
    """Gemma3ForConditionalGeneration (tiny SigLIP tower) saved by transformers, its config.json then
    edited into the Hub's 4B shape (a partial text_config: missing keys take Gemma3TextConfig's
    defaults) and the model reloaded by transformers from that file."""
    import transformers

    text = {k: v for k, v in TEXT.items() if k not in ("max_position_embeddings", "initializer_range")}
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    torch.manual_seed(6)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4)
    full = transformers.Gemma3ForConditionalGeneration(config).eval()
    _perturb_norms(full)
    path = str(tmp_path_factory.mktemp("gemma3_4b_like"))
    full.save_pretrained(path)
    cfg_path = os.path.join(path, "config.json")
    c = json.load(open(cfg_path))
    c["text_config"] = {"model_type": "gemma3_text", **_hub_shape(text)}  # only the keys the Hub lists
    json.dump(c, open(cfg_path, "w"))
    _with_tokenizer(path, tokenizer_files)
    return transformers.Gemma3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval(), path


def test_causal_lm_parity_round_trip_and_config(causal):
    import transformers

    hf, path = causal
    c = json.load(open(os.path.join(path, "config.json")))
    stored = load_file(os.path.join(path, "model.safetensors"))
    assert G.hf_prefix(c, stored) == "model." and G.dropped(c, stored, log=QUIET) == []
    ours, m, plan, vocab = _ours(c, stored, "model.")
    assert (m.window_size, m.layer_types, m.rope_scaling_factor, m.rope_local_base_freq) == (5, TEXT["layer_types"],
                                                                                              8.0, 20000.0)
    _assert_parity(ours, hf, vocab)
    back = _to_hf(ours, plan)  # ours -> HF: every stored tensor, bitwise
    assert back.keys() == stored.keys()
    assert [k for k in stored if not torch.equal(stored[k], back[k])] == []
    # the config.json we write for these options is the one transformers saved, field for field
    tok = types.SimpleNamespace(bos=2, eod=1, pad=0)
    ours_cfg = transformers.Gemma3TextConfig(**G.hf_config(m, vocab, tok, "float32")).to_dict()
    theirs = transformers.Gemma3TextConfig.from_pretrained(path).to_dict()
    skip = {"transformers_version", "_name_or_path"}
    assert {k: v for k, v in ours_cfg.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    # the Hub's older shape of the same config: we read what transformers reads
    hub = _hub_shape(c)
    assert G.fields_from_hf(hub, "hub.json", QUIET) == G.fields_from_hf(c, "config.json", QUIET)
    from_hub = transformers.Gemma3TextConfig(**hub)
    assert (from_hub.layer_types, from_hub.rope_parameters) == (theirs["layer_types"], theirs["rope_parameters"])


def test_conditional_generation_text_tower(multimodal, tmp_path):
    """The text tower of a Hub-shaped Gemma3ForConditionalGeneration under both name layouts,
    vision tensors dropped with a log line, exported as a Gemma3ForCausalLM that
    AutoModelForCausalLM loads with the same logits."""
    import transformers

    hf, path = multimodal
    c = json.load(open(os.path.join(path, "config.json")))
    stored = load_file(os.path.join(path, "model.safetensors"))
    prefix = G.hf_prefix(c, stored)
    assert prefix == "language_model.model."  # what save_pretrained writes (the Hub's layout)
    lines = []
    skipped = G.dropped(c, stored, "gemma3_4b_like", log=lines.append)
    assert skipped and all(n.startswith(("vision_tower.", "multi_modal_projector.")) for n in skipped)
    assert len(lines) == 1 and "vision" in lines[0] and str(len(skipped)) in lines[0]
    ours, m, plan, vocab = _ours(c, stored, prefix)
    assert m.max_position_embeddings == 131072 and m.kv_channels == 16  # a default, and a listed key
    assert {G.hf_name(h, prefix) for r in plan for h in r.hf} | set(skipped) == set(stored)
    a = _assert_parity(ours, hf, vocab)
    # the in-memory names (model.language_model.*) are found and read too
    memory = hf.state_dict()
    assert G.hf_prefix(c, memory) == "model.language_model."
    again, *_ = _ours(c, memory, "model.language_model.")
    assert all(torch.equal(p, q) for p, q in zip(ours.state_dict().values(), again.state_dict().values()))
    # export: a text-only Gemma3ForCausalLM holding the text tower bitwise
    out = tmp_path / "text_only"
    out.mkdir()
    save_file(_to_hf(ours, plan), str(out / "model.safetensors"), metadata={"format": "pt"})
    json.dump(G.causal_lm_config(c), open(out / "config.json", "w"))
    causal = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(causal).__name__ == "Gemma3ForCausalLM"
    exported = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(exported[h], stored[G.hf_name(h, prefix)]) for h in exported)
    x = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (causal(input_ids=x).logits - a).abs().max().item() <= 1e-4


def test_refuses_what_cannot_be_matched():
    good = {"model_type": "gemma3_text", **TEXT}
    G.fields_from_hf(good, "c.json", QUIET)
    bad = {
        "final_logit_softcapping": ({"final_logit_softcapping": 30.0}, "final_logit_softcapping 30.0"),
        "attn_logit_softcapping": ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping 50.0"),
        "bidirectional": ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        "bias": ({"attention_bias": True}, "attention_bias"),
        "act": ({"hidden_activation": "gelu"}, "hidden_activation 'gelu'"),
        "llama3": ({"rope_parameters": {F: {"rope_type": "llama3", "factor": 8.0}, S: {}}},
                   "RoPE type 'llama3' on the full_attention"),
        "local_linear": ({"rope_parameters": {F: {}, S: {"rope_type": "linear", "factor": 2.0}}},
                         "RoPE type 'linear' on the sliding_attention"),
        "partial": ({"rope_parameters": {F: {"partial_rotary_factor": 0.5}, S: {}}}, "partial_rotary_factor 0.5"),
        "type_key": ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 8.0}}, "ambiguous"),
        "types": ({"layer_types": [S, "chunked_attention", F]}, "layer_types must list 3"),
        "no_window": ({"sliding_window": None}, "need a sliding_window"),
    }
    for name, (edit, message) in bad.items():
        with pytest.raises(ConversionError, match=message):
            G.fields_from_hf({**good, **edit}, "c.json", QUIET)
    with pytest.raises(ConversionError, match="text_config: model_type 'llama'"):
        G.fields_from_hf({"model_type": "gemma3", "text_config": {"model_type": "llama"}}, "c.json", QUIET)
    # the older sliding_window_pattern rule (default 6) when layer_types is absent
    six = G.fields_from_hf({"model_type": "gemma3", "text_config": {"num_hidden_layers": 7}}, "c.json", QUIET)
    assert six["layer_types"] == [S] * 5 + [F, S] and six["vocab_size"] == 262208 and six["rotary_base"] == 1000000
    # export: a model Gemma3ForCausalLM does not compute is named, not approximated
    cfg = Config()
    for k, v in {"position_embedding_type": "rope", "normalization": "RMSNorm", "swiglu": True,
                 "disable_bias_linear": True, "sandwich_norm": True}.items():
        setattr(cfg.model, k, v)
    m = finalize(cfg).model
    assert G.matches(m)
    with pytest.raises(ConversionError, match="--apply-layernorm-1p; --qk-layernorm; --scale-embeddings; --geglu"):
        G.hf_config(m, 8000, types.SimpleNamespace(bos=1, eod=2, pad=0), "float32")


def _cli(name, argv, capsys) -> str:
    import importlib

    code = importlib.import_module(f"megatron_th.cli.{name}").main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _logits(model, vocab):
    x = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(tokens=x) if isinstance(model, GPTModel) else model(input_ids=x).logits


def test_tools_round_trip(causal, multimodal, tmp_path, capsys):
    """tools/convert_from_hf.py -> ours -> tools/convert_to_hf.py for both classes: our logits
    equal transformers'; every exported tensor is the stored one, bitwise; config.json is the
    base's (a Gemma3ForConditionalGeneration comes back as its text tower, a Gemma3ForCausalLM);
    --fresh-config writes the Gemma 3 config for these options (the registry picks gemma3_text
    before Qwen3, which also has QK-norm)."""
    import transformers

    from megatron_th.inference import load_for_inference

    for name, (hf, path) in (("causal", causal), ("multimodal", multimodal)):
        ck, out = str(tmp_path / f"ck_{name}"), str(tmp_path / f"hf_{name}")
        log = _cli("convert_from_hf", ["--hf", path, "--output", ck], capsys)
        assert ("vision tower" in log) == (name == "multimodal"), log
        ours, tok, cfg = load_for_inference(ck)
        assert (cfg.model.vocab_size, tok.vocab_size) == (8003, 8000)  # every embedding row kept
        theirs = _logits(hf, 8003)
        assert (_logits(ours, 8003) - theirs).abs().max().item() <= 1e-4
        _cli("convert_to_hf", ["--load", ck, "--output", out], capsys)
        c = json.load(open(os.path.join(path, "config.json")))
        assert json.load(open(os.path.join(out, "config.json"))) == G.causal_lm_config(c)
        stored, exported = (load_file(os.path.join(d, "model.safetensors")) for d in (path, out))
        prefix = G.hf_prefix(c, stored)
        assert {G.hf_name(n, prefix) for n in exported} == set(stored) - set(G.dropped(c, stored, log=QUIET))
        assert [n for n in exported if not torch.equal(exported[n], stored[G.hf_name(n, prefix)])] == []
        back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert type(back).__name__ == "Gemma3ForCausalLM"
        assert (_logits(back, 8003) - theirs).abs().max().item() <= 1e-4
    fresh = str(tmp_path / "fresh")
    _cli("convert_to_hf", ["--load", str(tmp_path / "ck_causal"), "--output", fresh, "--fresh-config"], capsys)
    skip = {"transformers_version", "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id"}
    mine, base = (transformers.Gemma3TextConfig.from_pretrained(d).to_dict() for d in (fresh, causal[1]))
    assert {k: v for k, v in mine.items() if k not in skip} == {k: v for k, v in base.items() if k not in skip}


# Continued pretraining after import at TP 2 + SP and PP 2 is checked by tests/test_convert_families.py
# test_continued_pretraining_from_import_at_any_layout, for Qwen3 and this Gemma 3 in one launch of two
# processes (each spawned rank costs seconds). The code the ranks run lives here because this module
# imports no transformers (test_convert_families.py does, through test_convert_hf.py).

def train_losses(argv: list) -> list:
    """Losses of ``pretrain`` for the training flags ``argv``, in this process group."""
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    return pretrain(parse_config(argv)[0], log=QUIET)["losses"]


def qk_norm_grads(ck: str, tokens: torch.Tensor, tp: int) -> dict:
    """Gradients of every q/k-norm weight for the summed per-token loss of ``tokens`` ([b, s + 1]
    int64; next-token labels) on the model of checkpoint ``ck`` at TP ``tp`` (1: the plain model;
    2: the TP model in this process group, after finalize_grads' TP sum): name -> fp32 tensor."""
    from megatron_th.config import Config, finalize
    from megatron_th.data.tokenizer import load_tokenizer, model_vocab_size
    from megatron_th.inference import load_for_inference
    from megatron_th.parallel.grads import finalize_grads
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.stages import build_chunks
    from megatron_th.training.resume import load_model, open_checkpoint, tokenizer_spec

    x, y = tokens[:, :-1], tokens[:, 1:]
    if tp == 1:
        model = load_for_inference(ck)[0].train()
        named = list(model.named_parameters())
    else:
        reader = open_checkpoint(ck)
        cfg = Config.from_dict(reader.meta["config"])
        cfg.parallel.tensor_model_parallel_size = tp
        cfg.data.micro_batch_size = cfg.data.global_batch_size = x.shape[0]
        finalize(cfg, tp)
        groups = ParallelGroups.build(tp=tp, pp=1)
        core = build_chunks(cfg, model_vocab_size(cfg.model, load_tokenizer(tokenizer_spec(reader))), groups, "cpu",
                            torch.float32)
        load_model(reader, core, groups)
        model, named = core.chunks[0].train(), list(core.named_parameters())
    model(tokens=x, labels=y).sum().backward()
    if tp > 1:
        finalize_grads(named, groups, tied_embeddings=False)
    return {n: p.grad.clone() for n, p in named if "q_layernorm" in n or "k_layernorm" in n}


def layouts_body(rank: int, world: int, jobs: dict) -> dict:
    """Rank code of the 2-process launch: for each job ``name -> (argv, pp_flags, ck, tokens)``, the
    losses at TP 2 + SP and at PP 2 (+ ``pp_flags``) and the TP 2 q/k-norm gradients of ``tokens``."""
    out = {}
    for name, (argv, pp_flags, ck, tokens) in jobs.items():
        out[name] = {"tp2_sp": train_losses(argv + ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
                     "pp2": train_losses(argv + ["--pipeline-model-parallel-size", "2", *pp_flags]),
                     # lists: tensors in the result queue would go through shared memory of a process that exits
                     "qk_grads": {n: g.tolist() for n, g in qk_norm_grads(ck, tokens, 2).items()}}
    return out


def training_job(path: str, tmp_path, data: str) -> tuple:
    """The Gemma 3 job of layouts_body for the HF directory ``path``: imported at sequence 32
    (> window 5), 4 steps on ``data``; PP 2 splits the 3 layers 2 + 1, so the window and local
    RoPE of layer 2 run on the second stage. Returns (argv, pp_flags, checkpoint, tokens)."""
    from megatron_th.convert.from_hf import import_from_hf

    ck = str(tmp_path / "ck_gemma3")
    import_from_hf(path, ck, seq_length=32, log=QUIET, progress=False)
    argv = ["--load", ck, "--use-checkpoint-args", "--data-path", data, "--data-cache-path",
            str(tmp_path / "cache"), "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "4",
            "--lr", "1e-3", "--num-threads", "1", "--eval-iters", "0", "--log-interval", "100", "--peak-tflops", "1",
            "--hidden-dropout", "0", "--attention-dropout", "0"]  # dropout is not a model field the import carries
    tokens = torch.randint(5, 8000, (2, 33), generator=torch.Generator().manual_seed(2))
    return argv, ["--decoder-first-pipeline-num-layers", "2"], ck, tokens
