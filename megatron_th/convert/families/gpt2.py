"""GPT-2 (``GPT2LMHeadModel``): learned positions, LayerNorm, GeLU, every bias, tied, multi-head.

transformers 5.24 ``models/gpt2``: ``activation_function`` ``gelu_new`` / ``gelu_pytorch_tanh``
(our ``--openai-gelu``) or ``gelu``; scores scaled by 1/sqrt(head_dim) only. ``Conv1D`` weights
are ``[in, out]`` (transposed against ours); ``c_attn`` is ``[q | k | v]`` over all heads. Older
files name tensors without ``transformer.`` (import finds them either way).
"""
from __future__ import annotations

from megatron_th.convert.families.common import special_tokens
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.convert.hf_weights import Rule, _qkv_rule, _transpose, _vocab_rule, one_rule

MODEL_TYPES = ("gpt2",)
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel"}
HELP = "gpt2       GPT2LMHeadModel: activation gelu_new / gelu_pytorch_tanh / gelu, n_inner any width"
_GELU = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": None, "gelu": False}


def fields_from_hf(c: dict, where: str = "config.json", log=print) -> dict:
    """Our ModelConfig fields for a GPT-2 config dict (raises ConversionError naming the key)."""
    act = c.get("activation_function", "gelu_new")
    if _GELU.get(act) is None:
        raise ConversionError(f"{where}: activation_function {act!r} is not supported (gelu_new, gelu)")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
        raise ConversionError(f"{where}: GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
    h, n = c.get("n_embd", 768), c.get("n_head", 12)
    return {
        "num_layers": c.get("n_layer", 12), "hidden_size": h, "num_attention_heads": n, "num_query_groups": n,
        "kv_channels": h // n, "ffn_hidden_size": c.get("n_inner") or 4 * h,
        "max_position_embeddings": c.get("n_positions", 1024), "position_embedding_type": "learned_absolute",
        "normalization": "LayerNorm", "norm_epsilon": c.get("layer_norm_epsilon", 1e-5), "swiglu": False,
        "openai_gelu": _GELU[act], "disable_bias_linear": False, "add_qkv_bias": False,
        "untie_embeddings_and_output_weights": False, "vocab_size": c.get("vocab_size", 50257)}


def matches(m) -> bool:
    """Learned positions + LayerNorm + an ungated GeLU MLP."""
    return m.position_embedding_type == "learned_absolute" and m.normalization == "LayerNorm" and \
        not m.gated_linear_unit


def problems(m) -> list[str]:
    """Why ``GPT2LMHeadModel`` cannot compute our ModelConfig ``m`` exactly (empty: it can)."""
    return [why for bad, why in (
        (m.disable_bias_linear, "no --disable-bias-linear (GPT-2 has every bias)"),
        (m.untie_embeddings_and_output_weights, "no --untie-embeddings-and-output-weights (GPT-2 ties them)"),
        (m.num_query_groups != m.num_attention_heads, "no --num-query-groups (GPT-2 is multi-head)"),
        (m.kv_channels * m.num_attention_heads != m.hidden_size, "--kv-channels h / heads"),
        (any(getattr(m, k, None) for k in ("qk_layernorm", "window_size", "apply_layernorm_1p", "sandwich_norm",
                                           "scale_embeddings", "query_pre_attn_scalar")),
         "none of QK-norm, windows, 1p norms, sandwich norms, scaled embeddings, query_pre_attn_scalar"),
    ) if bad]


def hf_config(m, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json (``GPT2LMHeadModel``) for our ModelConfig ``m``; ``vocab_size``: HF's rows."""
    return {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", "vocab_size": vocab_size,
            "torch_dtype": dtype, "dtype": dtype, "use_cache": True, "tie_word_embeddings": True,
            "initializer_range": m.init_method_std, **special_tokens(tokenizer),
            "n_embd": m.hidden_size, "n_layer": m.num_layers, "n_head": m.num_attention_heads,
            "n_inner": m.ffn_hidden_size, "n_positions": m.max_position_embeddings, "n_ctx": m.max_position_embeddings,
            "activation_function": "gelu_new" if m.openai_gelu else "gelu",
            "layer_norm_epsilon": m.norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def rules(m, vocab: int, padded: int) -> list[Rule]:
    """Every tensor of our full model and its ``GPT2LMHeadModel`` name (``transformer.…``)."""
    groups, qpg, hd = m.num_query_groups, m.num_attention_heads // m.num_query_groups, m.kv_channels
    out = [_vocab_rule("embedding.word_embeddings.weight", "transformer.wte.weight", vocab, padded),
           one_rule("embedding.position_embeddings.weight", "transformer.wpe.weight")]
    for i in range(m.num_layers):
        o, h = f"layers.{i}.", f"transformer.h.{i}."
        for w in ("weight", "bias"):
            out.append(one_rule(o + f"input_layernorm.{w}", h + f"ln_1.{w}"))
            out.append(one_rule(o + f"pre_mlp_layernorm.{w}", h + f"ln_2.{w}"))
            out.append(_qkv_rule(o + f"self_attention.linear_qkv.{w}", [h + f"attn.c_attn.{w}"], groups, qpg, hd,
                                 transposed_fused=True))
        for ours, theirs in (("self_attention.linear_proj", "attn.c_proj"), ("mlp.linear_fc1", "mlp.c_fc"),
                             ("mlp.linear_fc2", "mlp.c_proj")):
            out.append(one_rule(o + ours + ".weight", h + theirs + ".weight", _transpose))
            out.append(one_rule(o + ours + ".bias", h + theirs + ".bias"))
    out.append(one_rule("final_norm.weight", "transformer.ln_f.weight"))
    out.append(one_rule("final_norm.bias", "transformer.ln_f.bias"))
    return out


def hf_prefix(c: dict, names=()) -> str:
    """GPT-2's tensors are stored under ``transformer.`` as the rules name them (older files
    without it: import strips the prefix when the name is missing)."""
    return "transformer."
