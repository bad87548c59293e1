"""The Hugging Face model families we convert, keyed by config.json's ``model_type``.

A family is a module listed in ``MODULES`` (one line adds one) that exposes:

- ``MODEL_TYPES``: the ``model_type`` values it reads (the first is the one it writes, unless it
  has ``export_type``);
- ``fields_from_hf(c, where, log) -> dict``: our ModelConfig fields (``vocab_size`` = the
  embedding's rows included) for config dict ``c``, exactly as transformers resolves it (keys
  missing from the file take the config class's defaults); raises ConversionError naming the key
  of anything our model cannot compute exactly;
- ``hf_config(m, vocab_size, tokenizer, dtype) -> dict``: a config.json for our ModelConfig ``m``
  (for checkpoints without a stored base config, e.g. trained from scratch);
- ``rules(m, vocab, padded) -> list[Rule]``: every tensor, named as the text-only
  ``*ForCausalLM`` names it (``model.…``, ``lm_head.weight``; GPT-2: ``transformer.…``);
- ``hf_prefix(c, names=()) -> str``: where the file stores what the rules call ``model.`` (e.g. a
  multimodal model's text tower), given the stored tensor ``names``.

and optionally ``matches(m)`` / ``problems(m)`` / ``export_type(m)`` (which family writes a
model trained from scratch, and why it cannot), ``hf_name(name, prefix)`` (default: ``model.`` ->
``prefix``), ``dropped(c, names, where, log)`` (stored tensors import skips, logged: a vision
tower), ``causal_lm_config(c)`` (the stored base config as export writes it back; default: as is),
``HELP`` (its lines in ``--help``; default: the docstring's first line).
"""
from __future__ import annotations

import copy
import importlib

from megatron_th.convert.hf_arch import ConversionError

MODULES = (
    "megatron_th.convert.families.gemma3",  # before qwen: Gemma 3 also has QK-norm
    "megatron_th.convert.families.qwen",
    "megatron_th.convert.families.mistral",
    "megatron_th.convert.families.gpt2",
    "megatron_th.convert.families.llama",
)
DEFAULT = "llama"  # the RoPE family a model no other family claims is written as

# model types refused by name, with the reason (Mixture-of-Experts: out of scope)
REFUSED = {
    **{t: "Mixture-of-Experts" for t in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3",
                                        "olmoe", "phimoe", "dbrx", "jamba", "granitemoe", "llama4", "gpt_oss")},
    "gemma2": "logit soft-capping has no equivalent here", "qwen3_next": "hybrid linear attention + MoE",
}
REFUSED_FEATURES = (
    "Mixture-of-Experts: " + ", ".join(t for t, why in REFUSED.items() if why == "Mixture-of-Experts")
    + " (or any config with more than one expert)",
    "; ".join(f"{t}: {why}" for t, why in REFUSED.items() if why != "Mixture-of-Experts")
    + "; any model_type not listed above",
    "rope_type yarn, longrope, proportional (only default, linear, dynamic, llama3); a RoPE factor < 1; llama3 "
    "without low_freq_factor / high_freq_factor, or high <= low; rope_parameters per layer type (except Gemma 3); "
    "partial_rotary_factor != 1",
    "Llama attention_bias without mlp_bias (or the reverse); Qwen3 attention_bias true",
    "hidden_act other than silu (Llama family); GPT-2 activation_function gelu_fast, scale_attn_weights false, "
    "scale_attn_by_inverse_layer_idx",
    "sliding_attention layers without a sliding_window; layer_types other than full/sliding_attention, or not "
    "one per layer",
    "a directory whose embedding rows differ from vocab_size or are fewer than the tokenizer's tokens, or that "
    "holds tensors the config does not explain",
)


def modules() -> list:
    """The family modules, in ``MODULES`` order (imported on first use)."""
    return [importlib.import_module(name) for name in MODULES]


def by_type() -> dict:
    """model_type -> family module."""
    return {t: mod for mod in modules() for t in mod.MODEL_TYPES}


def family(model_type: str | None, where: str = "config.json", architectures=None):
    """The family module reading ``model_type``; ConversionError naming it when refused or unknown."""
    known = by_type()
    if model_type in known:
        return known[model_type]
    if model_type in REFUSED:
        raise ConversionError(f"{where}: model_type {model_type!r} ({architectures}) is not supported: "
                              f"{REFUSED[model_type]}")
    raise ConversionError(f"{where}: model_type {model_type!r} ({architectures}) is not supported; supported: "
                          f"{', '.join(sorted(known))}")


def read_config(c: dict, where: str = "config.json", log=print) -> tuple[str, object, dict]:
    """(model_type, family module, our ModelConfig fields) for an HF config dict."""
    fam = family(c.get("model_type"), where, c.get("architectures"))
    return c["model_type"], fam, fam.fields_from_hf(c, where, log)


def export_type(mod, m) -> str:
    """The model_type ``mod`` writes for our ModelConfig ``m``."""
    return mod.export_type(m) if hasattr(mod, "export_type") else mod.MODEL_TYPES[0]


def architecture_name(model_type: str) -> str:
    """The HF class of ``model_type`` (``LlamaForCausalLM``)."""
    mod = family(model_type)
    return getattr(mod, "ARCHITECTURES", {}).get(model_type, model_type)


def choose_architecture(m, requested: str | None = None) -> str:
    """The model_type our ModelConfig ``m`` is exported as: the first family whose ``matches(m)``,
    else Llama; ``requested`` may only swap a bias-free, window-free Llama for Mistral. Raises
    ConversionError listing what the chosen family needs."""
    chosen = next((export_type(mod, m) for mod in modules() if getattr(mod, "matches", lambda _: False)(m)), DEFAULT)
    if requested and requested != chosen:
        swap = requested == "mistral" and chosen == "llama" and not family("mistral").problems(m)
        if not swap:
            raise ConversionError(f"--architecture {requested}: this model is a {chosen} "
                                  f"({architecture_name(chosen)}); its options do not fit {requested}")
        chosen = requested
    bad = getattr(family(chosen), "problems", lambda _: [])(m)
    if bad:
        head = "no Hugging Face architecture computes this model" if chosen == DEFAULT else \
            f"{architecture_name(chosen)} cannot hold this model"
        raise ConversionError(f"{head}; {architecture_name(chosen)} needs: " + "; ".join(bad))
    return chosen


def hf_name(mod, name: str, prefix: str) -> str:
    """A rule's tensor name as stored under ``prefix`` (``hf_prefix``)."""
    if hasattr(mod, "hf_name"):
        return mod.hf_name(name, prefix)
    return prefix + name[len("model."):] if name.startswith("model.") else name


def dropped(mod, c: dict, names, where: str, log) -> list[str]:
    """Stored tensors import skips on purpose (logged by the family), e.g. a vision tower."""
    return list(mod.dropped(c, names, where, log)) if hasattr(mod, "dropped") else []


def base_config_for_export(mod, c: dict) -> dict:
    """The stored base config as export writes it back (a copy)."""
    return mod.causal_lm_config(copy.deepcopy(c)) if hasattr(mod, "causal_lm_config") else copy.deepcopy(c)


def describe() -> str:
    """The supported families and refused features, for ``--help``."""
    lines = ["supported model_type (config.json):"]
    for mod in modules():
        text = getattr(mod, "HELP", None) or f"{'/'.join(mod.MODEL_TYPES):<10} {(mod.__doc__ or '').splitlines()[0]}"
        lines += ["  " + line for line in text.splitlines()]
    lines.append("refused, with a one-line error naming the key:")
    lines += ["  " + line for line in REFUSED_FEATURES]
    return "\n".join(lines)
