"""Llama (``LlamaForCausalLM``): Llama 1/2, Llama 3.x (``rope_type`` llama3), TinyLlama, ...

transformers 5.24 ``models/llama``: RoPE (default, ``linear``, ``dynamic``, ``llama3``; see
common.py for how the two config shapes are read), RMSNorm, SwiGLU, any GQA and ``head_dim``,
tied or untied embeddings; biases on q/k/v/o with ``attention_bias`` and on the MLP with
``mlp_bias`` (ours has all biases or none: one without the other is refused). ``pretraining_tp``
is ignored: transformers 5 no longer reads it (and it never changed the function).
"""
from __future__ import annotations

from megatron_th.convert.families import common
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.convert.hf_weights import decoder_rules

MODEL_TYPES = ("llama",)
ARCHITECTURES = {"llama": "LlamaForCausalLM"}
HELP = ("llama      LlamaForCausalLM: Llama 1/2/3.x, TinyLlama; rope_type default / linear / dynamic / llama3, "
        "GQA, any head_dim, tied or untied, attention_bias together with mlp_bias")
# LlamaConfig's defaults (transformers 5.24 models/llama/configuration_llama.py)
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "attention_bias": False, "mlp_bias": False}


def fields_from_hf(c: dict, where: str = "config.json", log=print) -> dict:
    """Our ModelConfig fields for a Llama config dict. Raises ConversionError naming the key of
    anything our model cannot compute exactly."""
    fields = common.decoder_fields(c, where, DEFAULTS)
    attn_b, mlp_b = bool(common.get(c, "attention_bias", DEFAULTS)), bool(common.get(c, "mlp_bias", DEFAULTS))
    if attn_b != mlp_b:
        raise ConversionError(f"{where}: attention_bias={attn_b} with mlp_bias={mlp_b} is not supported "
                              "(our layers have biases everywhere or nowhere, or on q/k/v only)")
    fields["disable_bias_linear"] = not attn_b
    return fields


def matches(m) -> bool:
    """Llama is the default RoPE family: chosen when no other family claims the model."""
    return False


def problems(m) -> list[str]:
    """Why ``LlamaForCausalLM`` cannot compute our ModelConfig ``m`` exactly (empty: it can)."""
    out = common.decoder_problems(m)
    if m.add_qkv_bias and m.disable_bias_linear:
        out.append("no --add-qkv-bias alone (that is Qwen2)")
    if m.qk_layernorm:
        out.append("no --qk-layernorm (that is Qwen3)")
    if m.window_size is not None:
        out.append("no --window-size (Llama has no sliding window: Mistral, Qwen2, Qwen3 do)")
    return out


def hf_config(m, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json (``LlamaForCausalLM``) for our ModelConfig ``m``; ``vocab_size``: HF's rows."""
    biased = not m.disable_bias_linear
    return {**common.decoder_config(m, "llama", ARCHITECTURES["llama"], vocab_size, tokenizer, dtype),
            "attention_bias": biased, "mlp_bias": biased, "pretraining_tp": 1}


def rules(m, vocab: int, padded: int):
    """Tensor rules (hf_weights.decoder_rules: ``model.…``, ``lm_head.weight``)."""
    return decoder_rules(m, vocab, padded)


def hf_prefix(c: dict, names=()) -> str:
    """The decoder's tensors are stored under ``model.`` as the rules name them."""
    return "model."
