"""Which Hugging Face architecture a model is, and its config.json, both ways.

Our model options map onto four `transformers` classes:

=================  =========================================================================
llama              RoPE + RMSNorm + SwiGLU, no biases (or ``attention_bias`` + ``mlp_bias``:
                   every linear layer has a bias), any GQA, any head dim, tied or untied
qwen2              as llama, with a bias on q/k/v only (``--add-qkv-bias``)
mistral            as llama without biases; imported (a ``sliding_window`` is reported, see
                   below) and exported on request (``--architecture mistral``)
gpt2               learned positions + LayerNorm + GeLU (tanh ``gelu_new`` or exact ``gelu``),
                   every bias, multi-head attention, tied embeddings, ffn any width
=================  =========================================================================

Anything else (e.g. RoPE scaling, a Llama with attention biases but none in the MLP) is refused
with one line that names the option, never converted approximately.
"""
from __future__ import annotations

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
_GELU = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": None, "gelu": False}



class ConversionError(ValueError):
    """A model, config or tokenizer that cannot be converted exactly."""


def _num(x):
    return int(x) if float(x).is_integer() else float(x)


def choose_architecture(m, requested: str | None = None) -> str:
    """The HF architecture for our ModelConfig ``m`` (``requested`` overrides when compatible)."""
    rope_family = m.position_embedding_type == "rope" and m.normalization == "RMSNorm" and m.swiglu
    gpt2_family = (m.position_embedding_type == "learned_absolute" and m.normalization == "LayerNorm"
                   and not m.swiglu)
    if gpt2_family:
        problems = [why for bad, why in (
            (m.disable_bias_linear, "--disable-bias-linear (GPT-2 has every bias)"),
            (m.untie_embeddings_and_output_weights, "--untie-embeddings-and-output-weights (GPT-2 ties them)"),
            (m.num_query_groups != m.num_attention_heads, "--num-query-groups (GPT-2 is multi-head)"),
            (m.kv_channels * m.num_attention_heads != m.hidden_size, "--kv-channels other than h / heads"),
        ) if bad]
        arch = "gpt2"
    elif rope_family:
        problems, arch = [], "llama"
        if m.disable_bias_linear and m.add_qkv_bias:
            arch = "qwen2"
            if m.kv_channels * m.num_attention_heads != m.hidden_size:
                problems.append("--kv-channels other than h / heads with --add-qkv-bias (Qwen2 has no head_dim)")
    else:
        raise ConversionError(
            "no Hugging Face architecture computes this model: use RoPE + RMSNorm + SwiGLU (Llama, Mistral, "
            "Qwen2) or learned positions + LayerNorm + GeLU (GPT-2); got "
            f"--position-embedding-type {m.position_embedding_type}, --normalization {m.normalization}, "
            f"swiglu={m.swiglu}")
    if problems:
        raise ConversionError(f"{ARCHITECTURES[arch]} cannot hold this model: " + "; ".join(problems))
    if requested and requested != arch:
        if not (arch == "llama" and requested == "mistral" and m.disable_bias_linear):
            raise ConversionError(f"--architecture {requested}: this model is a {arch} "
                                  f"({'biases' if arch == 'llama' else 'options'} do not fit {requested})")
        arch = requested
    return arch


def hf_config(m, arch: str, vocab_size: int, tokenizer, dtype: str) -> dict:
    """config.json for our ModelConfig ``m`` as ``arch`` (``vocab_size``: true, unpadded)."""
    special = {"bos_token_id": tokenizer.bos, "eos_token_id": tokenizer.eod, "pad_token_id": tokenizer.pad}
    special = {k: (v if v is not None and v >= 0 else None) for k, v in special.items()}
    common = {"architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": vocab_size,
              "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
              "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
              "initializer_range": m.init_method_std, **special}
    if arch == "gpt2":
        return {**common, "n_embd": m.hidden_size, "n_layer": m.num_layers, "n_head": m.num_attention_heads,
                "n_inner": m.ffn_hidden_size, "n_positions": m.max_position_embeddings, "n_ctx": m.max_position_embeddings,
                "activation_function": "gelu_new" if m.openai_gelu else "gelu",
                "layer_norm_epsilon": m.norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    theta = _num(m.rotary_base)
    out = {**common, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
           "num_attention_heads": m.num_attention_heads, "num_key_value_heads": m.num_query_groups,
           "head_dim": m.kv_channels, "intermediate_size": m.ffn_hidden_size, "hidden_act": "silu",
           "max_position_embeddings": m.max_position_embeddings, "rms_norm_eps": m.norm_epsilon,
           # transformers 4.x reads rope_theta/rope_scaling, 5.x rope_parameters: write both
           "rope_theta": theta, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
           "attention_dropout": 0.0}
    if arch == "llama":
        biased = not m.disable_bias_linear
        out.update(attention_bias=biased, mlp_bias=biased, pretraining_tp=1)
    elif arch == "mistral":
        out.update(sliding_window=None)
    elif arch == "qwen2":
        out.pop("head_dim")
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers,
                   layer_types=["full_attention"] * m.num_layers)
    return out


def _rope_theta(c: dict, where: str) -> float:
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kinds = {params.get("rope_type"), scaling.get("rope_type"), scaling.get("type")} - {None, "default"}
    if kinds:
        kind = sorted(kinds)[0]
        raise ConversionError(f"{where}: RoPE scaling {kind!r} is not supported (only plain RoPE converts exactly)")
    return _num(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def model_fields_from_hf(c: dict, where: str = "config.json", log=print) -> tuple[str, dict]:
    """(architecture, {our ModelConfig field: value}) for an HF config dict."""
    arch = c.get("model_type")
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConversionError(f"{where}: model_type {arch!r} ({c.get('architectures')}) is not supported; "
                              f"supported: {known}")
    if arch == "gpt2":
        act = c.get("activation_function", "gelu_new")
        if _GELU.get(act) is None:
            raise ConversionError(f"{where}: activation_function {act!r} is not supported (gelu_new, gelu)")
        if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
            raise ConversionError(f"{where}: GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
        h, n = c["n_embd"], c["n_head"]
        npos = c.get("n_positions", 1024)
        return arch, {
            "num_layers": c["n_layer"], "hidden_size": h, "num_attention_heads": n, "num_query_groups": n,
            "kv_channels": h // n, "ffn_hidden_size": c.get("n_inner") or 4 * h,
            "max_position_embeddings": npos, "position_embedding_type": "learned_absolute",
            "normalization": "LayerNorm", "norm_epsilon": c.get("layer_norm_epsilon", 1e-5), "swiglu": False,
            "openai_gelu": _GELU[act], "disable_bias_linear": False, "add_qkv_bias": False,
            "untie_embeddings_and_output_weights": False}
    if c.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{where}: hidden_act {c.get('hidden_act')!r} is not supported (silu)")
    h, n = c["hidden_size"], c["num_attention_heads"]
    fields = {
        "num_layers": c["num_hidden_layers"], "hidden_size": h, "num_attention_heads": n,
        "num_query_groups": c.get("num_key_value_heads") or n, "kv_channels": c.get("head_dim") or h // n,
        "ffn_hidden_size": c["intermediate_size"], "max_position_embeddings": c.get("max_position_embeddings", 2048),
        "position_embedding_type": "rope", "rotary_base": _rope_theta(c, where), "normalization": "RMSNorm",
        "norm_epsilon": c.get("rms_norm_eps", 1e-6), "swiglu": True, "openai_gelu": False,
        "disable_bias_linear": True, "add_qkv_bias": False,
        "untie_embeddings_and_output_weights": not c.get("tie_word_embeddings", False)}
    if arch == "llama":
        attn_b, mlp_b = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
        if attn_b != mlp_b:
            raise ConversionError(f"{where}: attention_bias={attn_b} with mlp_bias={mlp_b} is not supported "
                                  "(our layers have biases everywhere or nowhere, or on q/k/v only)")
        fields["disable_bias_linear"] = not attn_b
    elif arch == "qwen2":
        fields["add_qkv_bias"] = True
        window = c.get("sliding_window") if c.get("use_sliding_window") else None
    if arch == "mistral":
        window = c.get("sliding_window")
    if arch in ("mistral", "qwen2") and window:
        if window < fields["max_position_embeddings"]:
            log(f"warning: {where}: sliding_window {window} is not implemented: attention is exact for "
                f"sequences up to {window} tokens and full (not windowed) beyond")
    return arch, fields
