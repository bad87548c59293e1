"""Tensor names and layouts, ours <-> Hugging Face, as a list of reversible rules.

A ``Rule`` maps a few of our logical tensors to a few HF tensors with two pure functions, so the
converters can stream: read one rule's inputs, convert, write, forget. Layout facts:

- ``linear_qkv`` rows are grouped per key/value group ``[q heads of the group, k, v]``; HF
  Llama/Mistral/Qwen2/Qwen3 keep ``q_proj`` / ``k_proj`` / ``v_proj``, and query head i of HF uses kv
  head ``i // (heads / groups)`` as ours does, so the split is a reshape. GPT-2's ``c_attn`` is
  ``[q | k | v]`` over all heads, i.e. groups = heads with one query head each, transposed.
- ``linear_fc1`` under SwiGLU is ``[gate; up]`` -> ``gate_proj``, ``up_proj``.
- RoPE: ours rotates dimension i with i + hd/2 like HF's ``rotate_half``: q/k need no permutation.
- GPT-2 stores ``Conv1D`` weights as ``[in, out]``: transposed against ``nn.Linear``.
- Embedding and untied head: ours is padded to ``make_vocab_size_divisible_by`` rows; HF has
  ``vocab_size`` rows (the tokenizer's size, or more: Qwen2.5's 151936). Export drops the padding
  rows; import appends zero rows.

Each family (``megatron_th/convert/families``) builds its list from these pieces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable  # list of our tensors -> list of HF tensors
    from_hf: Callable  # list of HF tensors -> list of our tensors


def _same(ts):
    return list(ts)


def _transpose(ts):
    return [t.t().contiguous() for t in ts]


def split_qkv(t: torch.Tensor, groups: int, q_per_group: int, hd: int) -> list[torch.Tensor]:
    """Our grouped fused tensor (weight [rows, h] or bias [rows]) -> [q, k, v]."""
    g = t.reshape(groups, q_per_group + 2, hd, *t.shape[1:])
    q = g[:, :q_per_group].reshape(groups * q_per_group * hd, *t.shape[1:])
    return [q.contiguous(), g[:, q_per_group].reshape(groups * hd, *t.shape[1:]).contiguous(),
            g[:, q_per_group + 1].reshape(groups * hd, *t.shape[1:]).contiguous()]


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int, q_per_group: int, hd: int) -> torch.Tensor:
    rest = q.shape[1:]
    parts = (q.reshape(groups, q_per_group, hd, *rest), k.reshape(groups, 1, hd, *rest), v.reshape(groups, 1, hd, *rest))
    return torch.cat(parts, dim=1).reshape(groups * (q_per_group + 2) * hd, *rest).contiguous()


def _vocab_rule(ours: str, hf: str, vocab: int, padded: int) -> Rule:
    def to_hf(ts):
        return [ts[0][:vocab].contiguous()]

    def from_hf(ts):
        t = ts[0]
        if t.shape[0] < padded:
            t = torch.cat([t, t.new_zeros(padded - t.shape[0], *t.shape[1:])])
        return [t]

    return Rule((ours,), (hf,), to_hf, from_hf)


def _qkv_rule(ours, hf, groups, qpg, hd, transposed_fused=False):
    """ours: fused grouped; hf: three tensors, or one fused [q|k|v] (GPT-2, ``transposed_fused``)."""
    if transposed_fused:
        def to_hf(ts):
            t = ts[0]
            q, k, v = split_qkv(t, groups, qpg, hd)
            fused = torch.cat([q, k, v], dim=0)
            return [fused.t().contiguous() if fused.dim() == 2 else fused]

        def from_hf(ts):
            t = ts[0].t() if ts[0].dim() == 2 else ts[0]
            q, k, v = t.chunk(3, dim=0)
            return [merge_qkv(q, k, v, groups, qpg, hd)]
    else:
        def to_hf(ts):
            return split_qkv(ts[0], groups, qpg, hd)

        def from_hf(ts):
            return [merge_qkv(*ts, groups, qpg, hd)]
    return Rule((ours,), tuple(hf), to_hf, from_hf)


def _gate_up_rule(ours, gate, up):
    return Rule((ours,), (gate, up), lambda ts: [c.contiguous() for c in ts[0].chunk(2, dim=0)],
                lambda ts: [torch.cat(ts, dim=0)])


def one_rule(ours: str, hf: str, fn=_same) -> Rule:
    """One tensor each side, the same function both ways (``_same`` or ``_transpose``)."""
    return Rule((ours,), (hf,), fn, fn)


def decoder_rules(m, vocab: int, padded: int) -> list[Rule]:
    """Every tensor of our full model (ModelConfig ``m``) and its name in a Llama-style
    ``*ForCausalLM`` (Llama, Mistral, Qwen2, Qwen3: ``model.…``, ``lm_head.weight``). Biases follow
    ``m`` (all with ``attention_bias`` + ``mlp_bias``, q/k/v only with ``add_qkv_bias``); with
    ``qk_layernorm``, ``self_attn.q_norm`` / ``k_norm`` (Qwen3). ``vocab``: the rows HF holds."""
    groups, qpg, hd = m.num_query_groups, m.num_attention_heads // m.num_query_groups, m.kv_channels
    out = [_vocab_rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", vocab, padded)]
    qkv_bias = (not m.disable_bias_linear) or m.add_qkv_bias
    biased = not m.disable_bias_linear
    for i in range(m.num_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        out.append(one_rule(o + "input_layernorm.weight", h + "input_layernorm.weight"))
        out.append(one_rule(o + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"))
        for w in ("weight", "bias") if qkv_bias else ("weight",):
            out.append(_qkv_rule(o + f"self_attention.linear_qkv.{w}",
                                 [h + f"self_attn.{p}_proj.{w}" for p in "qkv"], groups, qpg, hd))
        if getattr(m, "qk_layernorm", False):
            out.append(one_rule(o + "self_attention.q_layernorm.weight", h + "self_attn.q_norm.weight"))
            out.append(one_rule(o + "self_attention.k_layernorm.weight", h + "self_attn.k_norm.weight"))
        for w in ("weight", "bias") if biased else ("weight",):
            out.append(one_rule(o + f"self_attention.linear_proj.{w}", h + f"self_attn.o_proj.{w}"))
            out.append(_gate_up_rule(o + f"mlp.linear_fc1.{w}", h + f"mlp.gate_proj.{w}", h + f"mlp.up_proj.{w}"))
            out.append(one_rule(o + f"mlp.linear_fc2.{w}", h + f"mlp.down_proj.{w}"))
    out.append(one_rule("final_norm.weight", "model.norm.weight"))
    if m.untie_embeddings_and_output_weights:
        out.append(_vocab_rule("output_layer.weight", "lm_head.weight", vocab, padded))
    return out
