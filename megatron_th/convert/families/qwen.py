"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) and dense Qwen3 (``Qwen3ForCausalLM``).

transformers 5.24 ``models/qwen2``, ``models/qwen3``:

- Qwen2/2.5: Llama with a bias on q/k/v only (our ``--add-qkv-bias``); ``head_dim`` when the
  config has one (Qwen2Attention reads it), else hidden / heads.
- Qwen3: no biases (``attention_bias: true`` puts them on q/k/v *and* o, which our layers cannot
  hold: refused), ``q_norm`` / ``k_norm``: one ``[head_dim]`` RMSNorm weight each, shared by all
  heads, applied before RoPE (our ``--qk-layernorm``); ``head_dim`` 128 unless the config says.
- Both: sliding windows only with ``use_sliding_window: true``, on layers ``>= max_window_layers``
  or as ``layer_types`` lists them (common.py). Qwen2.5 ships ``use_sliding_window: false`` with a
  ``sliding_window`` (e.g. 131072) that transformers then ignores, and so do we, silently.

MoE variants (``qwen2_moe``, ``qwen3_moe``) are other model types, refused by the registry.
"""
from __future__ import annotations

from megatron_th.convert.families import common
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.convert.hf_weights import decoder_rules

MODEL_TYPES = ("qwen2", "qwen3")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
HELP = ("qwen2      Qwen2ForCausalLM: Qwen2, Qwen2.5 (q/k/v bias, embedding rows beyond the tokenizer kept, "
        "use_sliding_window + max_window_layers or layer_types)\n"
        "qwen3      Qwen3ForCausalLM: dense Qwen3 (q_norm/k_norm, any head_dim, windows as Qwen2)")
# Qwen2Config / Qwen3Config defaults (transformers 5.24)
_COMMON = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
           "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
DEFAULTS = {"qwen2": {**_COMMON, "head_dim": None}, "qwen3": {**_COMMON, "head_dim": 128, "attention_bias": False}}


def fields_from_hf(c: dict, where: str = "config.json", log=print) -> dict:
    """Our ModelConfig fields for a Qwen2 or Qwen3 config dict (raises ConversionError naming the key)."""
    kind = c.get("model_type")
    if kind not in MODEL_TYPES:
        raise ConversionError(f"{where}: model_type {kind!r} is not a dense Qwen2/Qwen3 ({', '.join(MODEL_TYPES)})")
    defaults = DEFAULTS[kind]
    fields = common.decoder_fields(c, where, defaults)
    fields.update(common.qwen_windows(c, where, fields["num_layers"]))
    if kind == "qwen2":
        fields["add_qkv_bias"] = True
    else:
        if common.get(c, "attention_bias", defaults):
            raise ConversionError(f"{where}: attention_bias true is not supported for qwen3 (biases on q/k/v and o "
                                  "but not the MLP: our layers have them everywhere, nowhere, or on q/k/v only)")
        fields["qk_layernorm"] = True
    return fields


def export_type(m) -> str:
    """qwen3 with QK-norm, else qwen2."""
    return "qwen3" if m.qk_layernorm else "qwen2"


def matches(m) -> bool:
    """QK-norm (Qwen3), or a bias on q/k/v only (Qwen2)."""
    return bool(m.qk_layernorm) or (m.add_qkv_bias and m.disable_bias_linear)


def problems(m) -> list[str]:
    """Why ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` (``export_type``) cannot compute our
    ModelConfig ``m`` exactly (empty: it can)."""
    out = common.decoder_problems(m)
    if not m.disable_bias_linear:
        out.append("--disable-bias-linear (Qwen has no o_proj / MLP biases)")
    if m.qk_layernorm and m.add_qkv_bias:
        out.append("no --add-qkv-bias with --qk-layernorm (Qwen3 has no q/k/v bias)")
    if not m.qk_layernorm and not m.add_qkv_bias:
        out.append("--add-qkv-bias (Qwen2) or --qk-layernorm (Qwen3)")
    return out


def hf_config(m, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json (``Qwen2ForCausalLM`` or, with QK-norm, ``Qwen3ForCausalLM``) for our ModelConfig
    ``m``; ``vocab_size``: HF's rows. Windows are written as ``layer_types`` (any pattern)."""
    kind = export_type(m)
    out = {**common.decoder_config(m, kind, ARCHITECTURES[kind], vocab_size, tokenizer, dtype),
           **common.qwen_window_config(m)}
    if kind == "qwen3":
        out["attention_bias"] = False
    return out


def rules(m, vocab: int, padded: int):
    """Tensor rules (hf_weights.decoder_rules; q_norm / k_norm under QK-norm)."""
    return decoder_rules(m, vocab, padded)


def hf_prefix(c: dict, names=()) -> str:
    """The decoder's tensors are stored under ``model.``."""
    return "model."
