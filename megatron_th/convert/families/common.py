"""What the Llama-style families (llama, mistral, qwen2, qwen3) share: their config.json read and
written exactly as transformers 5.24 resolves it.

- **Defaults.** A key missing from config.json takes the config class's default (``defaults`` of
  each family module, from ``LlamaConfig`` / ``MistralConfig`` / ``Qwen2Config`` / ``Qwen3Config``):
  e.g. Qwen3's ``head_dim`` is 128 when absent, Mistral's ``sliding_window`` 4096. A key present as
  ``null`` means "none" where transformers reads it so (``sliding_window: null``: no window).
- **RoPE** (``modeling_rope_utils.py`` ``convert_rope_params_to_dict`` + ``standardize_rope_params``):
  the parameters are ``rope_scaling`` when it is set (the Hub's older shape, with a top-level
  ``rope_theta``), else ``rope_parameters`` (transformers 5's shape, ``rope_theta`` inside); the
  type is ``rope_type``, else the older ``type``, else ``default``; ``rope_theta`` missing from the
  dict comes from the top level, else 10000. ``llama3`` reads ``factor``, ``low_freq_factor``,
  ``high_freq_factor`` and ``original_max_position_embeddings`` (a top-level key of that name wins;
  absent everywhere: ``max_position_embeddings``, as transformers does); ``linear`` and
  ``dynamic`` read ``factor``. Other types (``yarn``, ``longrope``, ``proportional``, ...), nested
  per-layer-type parameters and a ``partial_rotary_factor`` other than 1 are refused by name.
- **Windows**: Mistral's ``sliding_window`` slides every layer; Qwen2/Qwen3 keep ``sliding_window``
  only with ``use_sliding_window: true`` and then slide layers ``i >= max_window_layers``, unless
  the config lists ``layer_types`` (``Qwen2Config.__post_init__``). A query sees itself and the
  ``sliding_window - 1`` keys before it (``masking_utils.sliding_window_overlay``), our
  ``window_size``.
"""
from __future__ import annotations

from megatron_th.convert.hf_arch import ConversionError

ROPE_KINDS = ("default", "linear", "dynamic", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def num(x):
    """An int when the value is integral (``500000.0`` -> 500000), else the float."""
    return int(x) if float(x).is_integer() else float(x)


def get(c: dict, key: str, defaults: dict):
    """``c[key]`` if config.json has the key (even null), else the class default."""
    return c[key] if key in c else defaults.get(key)


def refuse_moe(c: dict, where: str) -> None:
    """Raises ConversionError for a Mixture-of-Experts config (any expert count above 1)."""
    for k in MOE_KEYS:
        if (c.get(k) or 0) > 1:
            raise ConversionError(f"{where}: {k} {c[k]}: Mixture-of-Experts models (Mixtral, Qwen3-MoE, ...) are "
                                  "not supported: dense models only")


def rope_fields(c: dict, where: str, max_positions: int) -> dict:
    """Our RoPE fields (``rotary_base``, ``use_rope_scaling``, ``rope_scaling_*``) for config ``c``.
    Raises ConversionError naming the key for anything but default / linear / dynamic / llama3."""
    src = "rope_scaling" if c.get("rope_scaling") else "rope_parameters"
    p = dict(c.get(src) or {})
    if any(isinstance(v, dict) for v in p.values()):
        raise ConversionError(f"{where}: {src} per layer type ({sorted(p)}) is not supported by this family")
    kind = p.get("rope_type", p.get("type", "default"))
    if kind not in ROPE_KINDS:
        raise ConversionError(f"{where}: RoPE scaling {kind!r} ({src}) is not supported; supported rope_type: "
                              f"{', '.join(ROPE_KINDS)}")
    partial = p.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise ConversionError(f"{where}: partial_rotary_factor {partial} is not supported (RoPE on the whole "
                              "head only)")
    fields = {"rotary_base": num(p.get("rope_theta", c.get("rope_theta", 10000.0))),
              "use_rope_scaling": kind != "default"}
    if kind == "default":
        return fields
    need = ("factor", "low_freq_factor", "high_freq_factor") if kind == "llama3" else ("factor",)
    missing = [k for k in need if p.get(k) is None]
    if missing:
        raise ConversionError(f"{where}: RoPE scaling {kind!r} ({src}) needs {', '.join(missing)}")
    if float(p["factor"]) < 1.0:
        raise ConversionError(f"{where}: RoPE scaling factor {p['factor']} ({src}) must be >= 1")
    fields.update(rope_scaling_type=kind, rope_scaling_factor=float(p["factor"]))
    if kind == "llama3":
        low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
        if high <= low:
            raise ConversionError(f"{where}: llama3 RoPE needs high_freq_factor ({high}) > low_freq_factor ({low})")
        orig = c["original_max_position_embeddings"] if "original_max_position_embeddings" in c else \
            p.get("original_max_position_embeddings", max_positions)
        fields.update(rope_scaling_low_freq_factor=low, rope_scaling_high_freq_factor=high,
                      rope_scaling_original_max_position_embeddings=int(orig))
    return fields


def rope_config(m) -> dict:
    """RoPE keys of a config.json for our ModelConfig ``m``, in both shapes: ``rope_theta`` +
    ``rope_scaling`` (transformers 4.x) and ``rope_parameters`` (5.x; 5.x reads ``rope_scaling``
    first when it is set, and both say the same)."""
    theta = num(m.rotary_base)
    scaling = None
    if m.use_rope_scaling:
        scaling = {"rope_type": m.rope_scaling_type, "factor": float(m.rope_scaling_factor)}
        if m.rope_scaling_type == "llama3":
            scaling.update(low_freq_factor=float(m.rope_scaling_low_freq_factor),
                           high_freq_factor=float(m.rope_scaling_high_freq_factor),
                           original_max_position_embeddings=int(m.rope_scaling_original_max_position_embeddings))
    return {"rope_theta": theta, "rope_scaling": scaling,
            "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": theta}}


def window_fields(window, types: list[str], where: str) -> dict:
    """Our ``window_size`` / ``layer_types`` for HF's per-layer ``types`` and ``sliding_window``:
    no window when no layer slides; ``layer_types`` None when every layer slides."""
    types = list(types)
    bad = sorted(set(types) - set(LAYER_TYPES))
    if bad:
        raise ConversionError(f"{where}: layer_types {bad} are not supported ({' / '.join(LAYER_TYPES)})")
    if "sliding_attention" not in types:
        return {"window_size": None, "layer_types": None}
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ConversionError(f"{where}: sliding_attention layers need a sliding_window >= 1, got {window!r} "
                              "(transformers itself cannot run this config)")
    return {"window_size": int(window), "layer_types": None if set(types) == {"sliding_attention"} else types}


def qwen_windows(c: dict, where: str, layers: int) -> dict:
    """Qwen2/Qwen3: ``Qwen2Config.__post_init__`` (the window only with ``use_sliding_window``;
    layers ``>= max_window_layers`` slide, unless ``layer_types`` lists them)."""
    window = c.get("sliding_window", 4096) if c.get("use_sliding_window", False) else None
    types = c.get("layer_types")
    if types is None:
        first = c.get("max_window_layers", 28)
        types = ["sliding_attention" if window is not None and i >= first else "full_attention" for i in range(layers)]
    elif len(types) != layers:
        raise ConversionError(f"{where}: layer_types lists {len(types)} layers, num_hidden_layers is {layers}")
    return window_fields(window, types, where)


def our_layer_types(m) -> list[str]:
    """Per-layer ``full_attention`` / ``sliding_attention`` of our ModelConfig ``m``."""
    if m.window_size is None:
        return ["full_attention"] * m.num_layers
    return list(m.layer_types) if m.layer_types is not None else ["sliding_attention"] * m.num_layers


def qwen_window_config(m) -> dict:
    """Qwen2/Qwen3 window keys for our ModelConfig ``m`` (``layer_types`` written out; any pattern)."""
    types = our_layer_types(m)
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    return {"use_sliding_window": bool(sliding), "sliding_window": m.window_size if sliding else None,
            "max_window_layers": sliding[0] if sliding else m.num_layers, "layer_types": types}


def decoder_fields(c: dict, where: str, defaults: dict) -> dict:
    """Our ModelConfig fields for a Llama-style decoder config ``c`` (sizes, RoPE, norms, tying,
    ``vocab_size``): SwiGLU, RMSNorm, no biases, no window, no QK-norm (families add theirs)."""
    refuse_moe(c, where)
    act = get(c, "hidden_act", defaults)
    if act != "silu":
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported (silu)")
    h, n = get(c, "hidden_size", defaults), get(c, "num_attention_heads", defaults)
    positions = get(c, "max_position_embeddings", defaults)
    return {
        "num_layers": get(c, "num_hidden_layers", defaults), "hidden_size": h, "num_attention_heads": n,
        "num_query_groups": get(c, "num_key_value_heads", defaults) or n,
        "kv_channels": get(c, "head_dim", defaults) or h // n, "ffn_hidden_size": get(c, "intermediate_size", defaults),
        "max_position_embeddings": positions, "position_embedding_type": "rope",
        **rope_fields(c, where, positions), "normalization": "RMSNorm",
        "norm_epsilon": get(c, "rms_norm_eps", defaults),
        "swiglu": True, "openai_gelu": False, "disable_bias_linear": True, "add_qkv_bias": False,
        "qk_layernorm": False, "window_size": None, "layer_types": None,
        "untie_embeddings_and_output_weights": not get(c, "tie_word_embeddings", defaults),
        "vocab_size": get(c, "vocab_size", defaults)}


def special_tokens(tokenizer) -> dict:
    """bos / eos / pad ids of our tokenizer for config.json (None where it has none)."""
    ids = {"bos_token_id": tokenizer.bos, "eos_token_id": tokenizer.eod, "pad_token_id": tokenizer.pad}
    return {k: (v if v is not None and v >= 0 else None) for k, v in ids.items()}


def decoder_config(m, model_type: str, architecture: str, vocab_size: int, tokenizer, dtype: str) -> dict:
    """The config.json keys every Llama-style family writes for our ModelConfig ``m``."""
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": vocab_size,
            "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
            "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
            "initializer_range": m.init_method_std, **special_tokens(tokenizer),
            "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_attention_heads, "num_key_value_heads": m.num_query_groups,
            "head_dim": m.kv_channels, "intermediate_size": m.ffn_hidden_size, "hidden_act": "silu",
            "max_position_embeddings": m.max_position_embeddings, "rms_norm_eps": m.norm_epsilon,
            **rope_config(m), "attention_dropout": 0.0}


def decoder_problems(m) -> list[str]:
    """What no Llama-style family holds: another block type, or Gemma's options."""
    out = []
    if not (m.position_embedding_type == "rope" and m.normalization == "RMSNorm" and m.swiglu):
        out.append("RoPE + RMSNorm + SwiGLU")
    gemma = [f"--{k.replace('_', '-')}" for k in ("apply_layernorm_1p", "sandwich_norm", "scale_embeddings", "geglu",
                                                  "query_pre_attn_scalar", "rope_local_base_freq")
             if getattr(m, k, None)]
    if gemma:
        out.append("none of " + ", ".join(gemma))
    return out
