"""Tensor names and layouts, ours <-> Hugging Face, as a list of reversible rules.

A ``Rule`` maps a few of our logical tensors to a few HF tensors with two pure functions, so the
converters can stream: read one rule's inputs, convert, write, forget. Layout facts:

- ``linear_qkv`` rows are grouped per key/value group ``[q heads of the group, k, v]``; HF
  Llama/Mistral/Qwen2 keep ``q_proj`` / ``k_proj`` / ``v_proj``, and query head i of HF uses kv
  head ``i // (heads / groups)`` as ours does, so the split is a reshape. GPT-2's ``c_attn`` is
  ``[q | k | v]`` over all heads, i.e. groups = heads with one query head each, transposed.
- ``linear_fc1`` under SwiGLU is ``[gate; up]`` -> ``gate_proj``, ``up_proj``.
- RoPE: ours rotates dimension i with i + hd/2 like HF's ``rotate_half``: q/k need no permutation.
- GPT-2 stores ``Conv1D`` weights as ``[in, out]``: transposed against ``nn.Linear``.
- Embedding and untied head: ours is padded to ``make_vocab_size_divisible_by`` rows; HF has
  the true vocabulary. Export drops the padding rows; import appends zero rows.
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


def rules(m, arch: str, vocab: int, padded: int) -> list[Rule]:
    """Every tensor of our full model (ModelConfig ``m``) and where it goes in ``arch``."""
    groups, qpg, hd = m.num_query_groups, m.num_attention_heads // m.num_query_groups, m.kv_channels
    tied = not m.untie_embeddings_and_output_weights
    out: list[Rule] = []

    def one(o, h, fn=_same):
        out.append(Rule((o,), (h,), fn, fn))

    if arch == "gpt2":
        out.append(_vocab_rule("embedding.word_embeddings.weight", "transformer.wte.weight", vocab, padded))
        one("embedding.position_embeddings.weight", "transformer.wpe.weight")
        for i in range(m.num_layers):
            o, h = f"layers.{i}.", f"transformer.h.{i}."
            for w in ("weight", "bias"):
                one(o + f"input_layernorm.{w}", h + f"ln_1.{w}")
                one(o + f"pre_mlp_layernorm.{w}", h + f"ln_2.{w}")
                out.append(_qkv_rule(o + f"self_attention.linear_qkv.{w}", [h + f"attn.c_attn.{w}"], groups, qpg, hd,
                                     transposed_fused=True))
            one(o + "self_attention.linear_proj.weight", h + "attn.c_proj.weight", _transpose)
            one(o + "self_attention.linear_proj.bias", h + "attn.c_proj.bias")
            one(o + "mlp.linear_fc1.weight", h + "mlp.c_fc.weight", _transpose)
            one(o + "mlp.linear_fc1.bias", h + "mlp.c_fc.bias")
            one(o + "mlp.linear_fc2.weight", h + "mlp.c_proj.weight", _transpose)
            one(o + "mlp.linear_fc2.bias", h + "mlp.c_proj.bias")
        one("final_norm.weight", "transformer.ln_f.weight")
        one("final_norm.bias", "transformer.ln_f.bias")
        return out

    out.append(_vocab_rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", vocab, padded))
    qkv_bias = (not m.disable_bias_linear) or m.add_qkv_bias
    biased = not m.disable_bias_linear
    for i in range(m.num_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        one(o + "input_layernorm.weight", h + "input_layernorm.weight")
        one(o + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight")
        for w in ("weight", "bias") if qkv_bias else ("weight",):
            out.append(_qkv_rule(o + f"self_attention.linear_qkv.{w}",
                                 [h + f"self_attn.{p}_proj.{w}" for p in "qkv"], groups, qpg, hd))
        for w in ("weight", "bias") if biased else ("weight",):
            one(o + f"self_attention.linear_proj.{w}", h + f"self_attn.o_proj.{w}")
            out.append(_gate_up_rule(o + f"mlp.linear_fc1.{w}", h + f"mlp.gate_proj.{w}", h + f"mlp.up_proj.{w}"))
            one(o + f"mlp.linear_fc2.{w}", h + f"mlp.down_proj.{w}")
    one("final_norm.weight", "model.norm.weight")
    if not tied:
        out.append(_vocab_rule("output_layer.weight", "lm_head.weight", vocab, padded))
    return out
