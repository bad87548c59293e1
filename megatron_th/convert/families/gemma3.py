"""Gemma 3 text models <-> ours: ``Gemma3ForCausalLM`` and the text tower of ``Gemma3ForConditionalGeneration``.

The definition is transformers 5.24's ``models/gemma3`` (``configuration_gemma3.py``,
``modeling_gemma3.py``). A Gemma 3 decoder layer is, in our options:

====================================  ======================================================
embed_tokens * sqrt(hidden)           ``scale_embeddings`` (the scale rounded to the weight dtype)
Gemma3RMSNorm: fp32, gain (1 + w)     ``normalization RMSNorm`` + ``apply_layernorm_1p``
input / post_attention /              ``input_layernorm`` / ``post_self_attn_layernorm`` /
pre_feedforward / post_feedforward    ``pre_mlp_layernorm`` / ``post_mlp_layernorm`` (``sandwich_norm``)
q_norm / k_norm ([head_dim])          ``q_layernorm`` / ``k_layernorm`` (``qk_layernorm``)
down(gelu_tanh(gate(x)) * up(x))      ``geglu`` + ``openai_gelu``
scores * query_pre_attn_scalar^-0.5   ``query_pre_attn_scalar``
layer_types, sliding_window           ``layer_types``, ``window_size`` (same meaning)
rope_parameters["full_attention"]     ``rotary_base`` + (``linear``) ``use_rope_scaling``, ``rope_scaling_factor``
rope_parameters["sliding_attention"]  ``rope_local_base_freq`` (plain RoPE)
====================================  ======================================================

Config shapes read (``fields_from_hf``), exactly as ``Gemma3TextConfig`` resolves them: a key
missing from config.json takes ``Gemma3TextConfig``'s default (the Hub's 4B/12B/27B
``text_config`` blocks list only a few keys); RoPE from ``rope_parameters`` per layer type, or the
older top-level ``rope_theta`` (global layers), ``rope_local_base_freq`` (sliding layers) and
``rope_scaling`` (merged into the global layers' parameters); ``layer_types``, or the older
``sliding_window_pattern`` p (layer i slides unless (i + 1) % p == 0; default 6). A model_type
``gemma3`` config is read through its ``text_config``; its top-level ``tie_word_embeddings``
decides tying (it is ``Gemma3ForConditionalGeneration``'s config).

Anything our model cannot compute exactly raises ConversionError naming the key: logit or
attention soft-capping, bidirectional attention, attention biases, an activation other than
``gelu_pytorch_tanh``, RoPE types other than default / linear (linear only on the global
layers), a partial rotary factor, unknown layer types.

Tensor names (``rules``) are ``Gemma3ForCausalLM``'s (``model.…``, ``lm_head.weight``). In a
``Gemma3ForConditionalGeneration`` file the text tower sits under ``language_model.model.`` (what
transformers' ``save_pretrained`` writes and the Hub holds: its ``conversion_mapping.py`` maps the
``llava`` layout ``^language_model`` -> ``model.language_model`` on load and back on save) or under
``model.language_model.`` (the module names in memory); ``hf_prefix`` finds which, ``hf_name``
renames, and ``dropped`` lists (and logs) the vision tower and projector tensors import skips.
An imported multimodal base comes back as ``Gemma3ForCausalLM`` (``causal_lm_config``).
"""
from __future__ import annotations

import copy

from megatron_th.convert.families import common
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.convert.hf_weights import Rule, _gate_up_rule, _qkv_rule, _vocab_rule, one_rule

MODEL_TYPES = ("gemma3_text", "gemma3")
ARCHITECTURES = {"gemma3_text": "Gemma3ForCausalLM", "gemma3": "Gemma3ForConditionalGeneration"}
HELP = ("gemma3_text Gemma3ForCausalLM: Gemma 3 1B ((1 + w) RMSNorms before and after attention and MLP, QK-norm, "
        "GeGLU, sliding + full layers with their own RoPE, linear scaling on the full ones)\n"
        "gemma3     Gemma3ForConditionalGeneration (Gemma 3 4B/12B/27B): the text tower; vision weights dropped, "
        "exported as Gemma3ForCausalLM\n"
        "           refused for Gemma 3: final_logit_softcapping, attn_logit_softcapping, use_bidirectional_attention, "
        "attention_bias, hidden_activation other than gelu_pytorch_tanh, rope_type other than default (linear: "
        "full_attention layers only)")

# Gemma3TextConfig's defaults (transformers 5.24 models/gemma3/configuration_gemma3.py): the value
# of a key config.json leaves out
TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096, "layer_types": None,
    "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
    "rope_parameters": None, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}  # Gemma3TextConfig.default_theta
SLIDING_WINDOW_PATTERN = 6  # Gemma3TextConfig.__post_init__: kwargs.get("sliding_window_pattern", 6)
LAYER_TYPES = common.LAYER_TYPES
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")  # Hub / save_pretrained, in-memory names


def text_config(c: dict, where: str = "config.json") -> tuple[dict, str]:
    """(the text model's config with ``Gemma3TextConfig``'s defaults filled in, where it was read).
    Raises ConversionError for a model_type outside MODEL_TYPES."""
    kind = c.get("model_type")
    if kind not in MODEL_TYPES:
        raise ConversionError(f"{where}: model_type {kind!r} is not a Gemma 3 text model ({', '.join(MODEL_TYPES)})")
    if kind == "gemma3":
        t, where = dict(c.get("text_config") or {}), where + ": text_config"
        if t.get("model_type", "gemma3_text") != "gemma3_text":
            raise ConversionError(f"{where}: model_type {t['model_type']!r} is not supported (gemma3_text)")
        t["tie_word_embeddings"] = c.get("tie_word_embeddings", True)  # the ConditionalGeneration ties by its own key
    else:
        t = dict(c)
    return {**TEXT_DEFAULTS, **t}, where


def layer_types(t: dict, where: str) -> list[str]:
    """Per-layer attention kinds as Gemma3TextConfig resolves them (``layer_types``, else the
    ``sliding_window_pattern`` rule)."""
    n = t["num_hidden_layers"]
    types = t.get("layer_types")
    if types is None:
        p = t.get("sliding_window_pattern", SLIDING_WINDOW_PATTERN)
        if not isinstance(p, int) or isinstance(p, bool) or p < 1:
            raise ConversionError(f"{where}: sliding_window_pattern must be a positive int, got {p!r}")
        types = ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n)]
    types = list(types)
    bad = sorted(set(types) - set(LAYER_TYPES))
    if bad or len(types) != n:
        raise ConversionError(f"{where}: layer_types must list {n} of {'/'.join(LAYER_TYPES)}, got {types}")
    return types


def rope_parameters(t: dict, where: str) -> dict:
    """{"full_attention": {...}, "sliding_attention": {...}} as ``Gemma3TextConfig.convert_rope_params_to_dict``
    + ``standardize_rope_params`` build them from either config shape."""
    params = copy.deepcopy(t.get("rope_parameters")) or {k: {"rope_type": "default"} for k in LAYER_TYPES}
    for k in LAYER_TYPES:
        params[k] = dict(params.get(k) or {"rope_type": "default"})
    if t.get("rope_scaling") is not None:
        params["full_attention"].update(t["rope_scaling"])
    for kind, key in (("full_attention", "rope_theta"), ("sliding_attention", "rope_local_base_freq")):
        params[kind].setdefault("rope_theta", t.get(key, DEFAULT_THETA[kind]))
    for k in LAYER_TYPES:
        p = params[k]
        if "type" in p:  # the older key: standardize_rope_params reads it only when rope_type is absent
            p.setdefault("rope_type", p["type"])
            if p["type"] != p["rope_type"]:
                raise ConversionError(f"{where}: rope parameters of {k} say type {p['type']!r} but rope_type "
                                      f"{p['rope_type']!r} (transformers reads rope_type): ambiguous, fix the config")
        p.setdefault("rope_type", "default")
    return params


def fields_from_hf(c: dict, where: str = "config.json", log=print) -> dict:
    """Our ModelConfig fields for a Gemma 3 config dict (model_type gemma3_text, or gemma3 through its
    text_config). ``vocab_size`` is the embedding's row count. Raises ConversionError naming the key
    of anything our model cannot compute exactly."""
    t, where = text_config(c, where)
    refuse = [why for bad, why in (
        (t["final_logit_softcapping"] is not None, f"final_logit_softcapping {t['final_logit_softcapping']}"),
        (t["attn_logit_softcapping"] is not None, f"attn_logit_softcapping {t['attn_logit_softcapping']}"),
        (bool(t["use_bidirectional_attention"]), "use_bidirectional_attention true"),
        (bool(t["attention_bias"]), "attention_bias true"),
        (t["hidden_activation"] != "gelu_pytorch_tanh", f"hidden_activation {t['hidden_activation']!r} "
                                                        "(only gelu_pytorch_tanh)"),
    ) if bad]
    if refuse:
        raise ConversionError(f"{where}: not supported (no exact equivalent): " + "; ".join(refuse))
    types = layer_types(t, where)
    used = set(types)
    rope = rope_parameters(t, where)
    full, local = rope["full_attention"], rope["sliding_attention"]
    for kind in sorted(used):
        p = rope[kind]
        allowed = ("default", "linear") if kind == "full_attention" else ("default",)
        if p["rope_type"] not in allowed:
            raise ConversionError(f"{where}: RoPE type {p['rope_type']!r} on the {kind} layers is not supported "
                                  f"(only {' / '.join(allowed)})")
        if p.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConversionError(f"{where}: partial_rotary_factor {p['partial_rotary_factor']} on the {kind} "
                                  "layers is not supported (only 1.0)")
    window = t["sliding_window"]
    if "sliding_attention" in used and (window is None or window < 1):
        raise ConversionError(f"{where}: sliding_attention layers need a sliding_window >= 1, got {window}")
    h, n = t["hidden_size"], t["num_attention_heads"]
    fields = {
        "num_layers": t["num_hidden_layers"], "hidden_size": h, "num_attention_heads": n,
        "num_query_groups": t["num_key_value_heads"] or n, "kv_channels": t["head_dim"] or h // n,
        "ffn_hidden_size": t["intermediate_size"], "max_position_embeddings": t["max_position_embeddings"],
        "position_embedding_type": "rope", "rotary_base": common.num(full["rope_theta"]),
        "rope_local_base_freq": float(local["rope_theta"]), "window_size": window, "layer_types": types,
        "normalization": "RMSNorm", "norm_epsilon": t["rms_norm_eps"], "apply_layernorm_1p": True,
        "sandwich_norm": True, "qk_layernorm": True, "scale_embeddings": True,
        "query_pre_attn_scalar": common.num(t["query_pre_attn_scalar"]), "swiglu": False, "geglu": True,
        "openai_gelu": True, "disable_bias_linear": True, "add_qkv_bias": False,
        "untie_embeddings_and_output_weights": not t["tie_word_embeddings"], "vocab_size": t["vocab_size"],
        "use_rope_scaling": False}
    if "full_attention" in used and full["rope_type"] == "linear":
        fields.update(use_rope_scaling=True, rope_scaling_type="linear", rope_scaling_factor=float(full["factor"]))
    return fields


def matches(m) -> bool:
    """Whether our ModelConfig ``m`` uses an option only Gemma 3 (among the HF families) has."""
    return any(getattr(m, k, False) for k in ("apply_layernorm_1p", "sandwich_norm", "geglu", "scale_embeddings"))


def problems(m) -> list[str]:
    """Why ``Gemma3ForCausalLM`` cannot compute our ModelConfig ``m`` exactly (empty: it can)."""
    sliding = "sliding_attention" in common.our_layer_types(m)
    return [why for bad, why in (
        (m.position_embedding_type != "rope", "--position-embedding-type rope"),
        (m.normalization != "RMSNorm" or not m.apply_layernorm_1p, "--normalization RMSNorm --apply-layernorm-1p"),
        (not m.sandwich_norm, "--sandwich-norm"), (not m.qk_layernorm, "--qk-layernorm"),
        (not m.scale_embeddings, "--scale-embeddings"),
        (not (m.geglu and m.openai_gelu), "--geglu --openai-gelu (gelu_pytorch_tanh)"),
        (not m.disable_bias_linear or m.add_qkv_bias, "--disable-bias-linear and no --add-qkv-bias"),
        (m.use_rope_scaling and m.rope_scaling_type != "linear", "RoPE scaling linear only (Gemma 3)"),
        (m.use_rope_scaling and sliding and m.rope_local_base_freq is None,
         "--rope-local-base-freq with --use-rope-scaling (Gemma 3's sliding layers use plain RoPE)"),
    ) if bad]


def hf_config(m, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json (``Gemma3ForCausalLM``, model_type gemma3_text) for our ModelConfig ``m``:
    ``vocab_size`` the true rows; both RoPE shapes (``rope_parameters`` for transformers 5.x, the
    top-level ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling`` of 4.x, which 5.x folds
    into ``rope_parameters``); ``layer_types`` (read since transformers 4.53; no
    ``sliding_window_pattern``, which 5.x would keep as an extra field). Raises ConversionError
    listing ``problems(m)``."""
    bad = problems(m)
    if bad:
        raise ConversionError("Gemma3ForCausalLM cannot hold this model; it needs: " + "; ".join(bad))
    types = common.our_layer_types(m)
    theta = common.num(m.rotary_base)
    local = common.num(m.rope_local_base_freq if m.rope_local_base_freq is not None else m.rotary_base)
    full = {"rope_type": "default", "rope_theta": theta}
    scaling = None
    if m.use_rope_scaling:
        scaling = {"rope_type": "linear", "factor": float(m.rope_scaling_factor)}
        full.update(scaling)
    out = {"architectures": [ARCHITECTURES["gemma3_text"]], "model_type": "gemma3_text", "vocab_size": vocab_size,
           "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
           "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
           "initializer_range": m.init_method_std, **common.special_tokens(tokenizer),
           "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
           "num_attention_heads": m.num_attention_heads, "num_key_value_heads": m.num_query_groups,
           "head_dim": m.kv_channels, "hidden_activation": "gelu_pytorch_tanh",
           "max_position_embeddings": m.max_position_embeddings, "rms_norm_eps": m.norm_epsilon,
           "attention_bias": False, "attention_dropout": 0.0,
           "query_pre_attn_scalar": common.num(m.query_pre_attn_scalar or m.kv_channels),
           "sliding_window": m.window_size, "layer_types": types,
           "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
           "rope_parameters": {"full_attention": full,
                               "sliding_attention": {"rope_type": "default", "rope_theta": local}},
           "rope_theta": theta, "rope_local_base_freq": local, "rope_scaling": scaling}
    return out


def rules(m, vocab: int, padded: int) -> list[Rule]:
    """Every tensor of our full model (ModelConfig ``m``) and its ``Gemma3ForCausalLM`` name(s).
    ``vocab``: the embedding rows HF holds; ours has ``padded`` rows (export drops the padding)."""
    groups, qpg, hd = m.num_query_groups, m.num_attention_heads // m.num_query_groups, m.kv_channels
    out = [_vocab_rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", vocab, padded)]

    def one(o, h):
        out.append(one_rule(o, h))

    for i in range(m.num_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        one(o + "input_layernorm.weight", h + "input_layernorm.weight")
        out.append(_qkv_rule(o + "self_attention.linear_qkv.weight", [h + f"self_attn.{p}_proj.weight" for p in "qkv"],
                             groups, qpg, hd))
        one(o + "self_attention.q_layernorm.weight", h + "self_attn.q_norm.weight")
        one(o + "self_attention.k_layernorm.weight", h + "self_attn.k_norm.weight")
        one(o + "self_attention.linear_proj.weight", h + "self_attn.o_proj.weight")
        one(o + "post_self_attn_layernorm.weight", h + "post_attention_layernorm.weight")
        one(o + "pre_mlp_layernorm.weight", h + "pre_feedforward_layernorm.weight")
        out.append(_gate_up_rule(o + "mlp.linear_fc1.weight", h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"))
        one(o + "mlp.linear_fc2.weight", h + "mlp.down_proj.weight")
        one(o + "post_mlp_layernorm.weight", h + "post_feedforward_layernorm.weight")
    one("final_norm.weight", "model.norm.weight")
    if m.untie_embeddings_and_output_weights:
        out.append(_vocab_rule("output_layer.weight", "lm_head.weight", vocab, padded))
    return out


def hf_prefix(c: dict, names=()) -> str:
    """Where the text tower's ``model.`` tensors are stored: ``model.`` (gemma3_text); for gemma3
    ``language_model.model.`` (save_pretrained's and the Hub's layout; also the default without
    ``names``) or ``model.language_model.`` when ``names`` (the stored tensor names) use it."""
    if c.get("model_type") != "gemma3":
        return "model."
    names = set(names)
    for p in _TEXT_PREFIXES:
        if p + "embed_tokens.weight" in names:
            return p
    return _TEXT_PREFIXES[0]


def hf_name(name: str, prefix: str) -> str:
    """A ``Gemma3ForCausalLM`` tensor name (``rules``) as stored under ``prefix`` (``hf_prefix``);
    the head of the old layout is ``language_model.lm_head.weight``."""
    if name.startswith("model."):
        return prefix + name[len("model."):]
    if name == "lm_head.weight" and prefix == "language_model.model.":
        return "language_model.lm_head.weight"
    return name


def dropped(c: dict, names, where: str = "model", log=print) -> list[str]:
    """The stored tensors import skips: a gemma3 model's vision tower and multi-modal projector
    (one log line says how many). Other names outside the text tower are not listed here."""
    if c.get("model_type") != "gemma3":
        return []
    out = [n for n in names if n.startswith(VISION_PREFIXES)]
    if out:
        log(f"note: {where}: Gemma3ForConditionalGeneration: importing its text tower only; {len(out)} vision tower "
            "and multi-modal projector tensors dropped (the export is a text-only Gemma3ForCausalLM)")
    return out


def causal_lm_config(c: dict) -> dict:
    """A base's config.json as the ``Gemma3ForCausalLM`` that export writes: unchanged for
    gemma3_text; for gemma3 its ``text_config`` (keys as stored, no defaults added) with the
    architecture, the top-level ``tie_word_embeddings`` and the dtype / token ids it lacks."""
    if c.get("model_type") != "gemma3":
        return dict(c)
    t = dict(c.get("text_config") or {})
    t.update(architectures=[ARCHITECTURES["gemma3_text"]], model_type="gemma3_text",
             tie_word_embeddings=c.get("tie_word_embeddings", True))
    for k in ("torch_dtype", "dtype", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range"):
        if k in c and k not in t:
            t[k] = c[k]
    return t
