"""Mistral (``MistralForCausalLM``): Llama without biases, every layer optionally windowed.

transformers 5.24 ``models/mistral``: ``sliding_window`` (default 4096 when config.json lacks the
key; ``null``: no window) applies to every layer; ``layer_types`` in a Mistral config are ignored
by transformers (it warns), and so here. ``head_dim`` null means hidden / heads.
"""
from __future__ import annotations

from megatron_th.convert.families import common
from megatron_th.convert.hf_weights import decoder_rules

MODEL_TYPES = ("mistral",)
ARCHITECTURES = {"mistral": "MistralForCausalLM"}
HELP = ("mistral    MistralForCausalLM: sliding_window on every layer (null: none), GQA, any head_dim, "
        "any rope_type Llama takes")
# MistralConfig's defaults (transformers 5.24 models/mistral/configuration_mistral.py)
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None, "hidden_act": "silu",
            "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "sliding_window": 4096}


def fields_from_hf(c: dict, where: str = "config.json", log=print) -> dict:
    """Our ModelConfig fields for a Mistral config dict (raises ConversionError naming the key)."""
    fields = common.decoder_fields(c, where, DEFAULTS)
    window = common.get(c, "sliding_window", DEFAULTS)
    types = ["sliding_attention" if window is not None else "full_attention"] * fields["num_layers"]
    fields.update(common.window_fields(window, types, where))
    return fields


def matches(m) -> bool:
    """A bias-free RoPE model whose every layer slides (Llama has no window)."""
    types = common.our_layer_types(m)
    return m.disable_bias_linear and not m.add_qkv_bias and not m.qk_layernorm and \
        types == ["sliding_attention"] * m.num_layers


def problems(m) -> list[str]:
    """Why ``MistralForCausalLM`` cannot compute our ModelConfig ``m`` exactly (empty: it can)."""
    out = common.decoder_problems(m)
    if not m.disable_bias_linear or m.add_qkv_bias:
        out.append("no biases (--disable-bias-linear, no --add-qkv-bias)")
    if m.qk_layernorm:
        out.append("no --qk-layernorm")
    if len(set(common.our_layer_types(m))) > 1:
        out.append("the same window on every layer (Mistral has no layer_types: Qwen2/Qwen3 do)")
    return out


def hf_config(m, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json (``MistralForCausalLM``) for our ModelConfig ``m``; ``vocab_size``: HF's rows."""
    return {**common.decoder_config(m, "mistral", ARCHITECTURES["mistral"], vocab_size, tokenizer, dtype),
            "sliding_window": m.window_size}


def rules(m, vocab: int, padded: int):
    """Tensor rules (hf_weights.decoder_rules)."""
    return decoder_rules(m, vocab, padded)


def hf_prefix(c: dict, names=()) -> str:
    """The decoder's tensors are stored under ``model.``."""
    return "model."
