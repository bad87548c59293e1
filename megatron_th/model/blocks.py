"""Transformer building blocks: norms, RoPE, self-attention, MLP, layer.

Plain ``nn.Linear`` everywhere; tensor parallelism swaps them from outside (parallelize.py). The
modules infer their local head count from the projection output, so a TP shard runs the same code.

Layouts that conversion and TP rely on:
- ``linear_qkv`` rows are grouped per key/value group: for each of ``ng`` groups, ``np/ng`` query
  heads, then that group's K head, then its V head (``kv_channels`` rows each). A TP shard holds
  whole groups.
- ``linear_fc1`` under SwiGLU is ``[gate; up]``; ``down(silu(gate(x)) * up(x))``.
- RoPE rotates dimension i with i + hd/2 (HF Llama's ``rotate_half``), theta = ``rotary_base``
  (rope.py: scaling; Gemma 3's sliding layers use their own plain RoPE at ``rope_local_base_freq``).
- QK-norm (``qk_layernorm``): ``q_layernorm`` / ``k_layernorm``, one ``[head_dim]`` weight each,
  shared by all heads, applied to q and k before RoPE (Qwen3, Gemma 3). Under TP each rank sees only
  its heads: the weights are replicated and their gradients summed over TP (parallelize.py).
- Sandwich norms (``sandwich_norm``, Gemma 2/3): ``post_self_attn_layernorm`` and
  ``post_mlp_layernorm`` normalise each sublayer's output before the residual add.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_th.model.attention import attention, prepare_documents
from megatron_th.model.norms import make_norm
from megatron_th.model.rope import RotaryEmbedding, apply_rope  # noqa: F401 (RotaryEmbedding: re-exported)


def layer_window(cfg, layer_number: int) -> int | None:
    """The attention window of layer ``layer_number`` (0-based): ``window_size`` when the layer
    slides (``layer_types[i] == "sliding_attention"``, or every layer when no types are given),
    else None (full causal attention)."""
    window = getattr(cfg, "window_size", None)
    types = getattr(cfg, "layer_types", None)
    if window is None or (types is not None and types[layer_number] != "sliding_attention"):
        return None
    return window


class SelfAttention(nn.Module):
    def __init__(self, cfg, layer_number: int = 0):
        super().__init__()
        self.hd = cfg.kv_channels
        self.q_per_group = cfg.num_attention_heads // cfg.num_query_groups
        qkv_out = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * self.hd
        self.linear_qkv = nn.Linear(cfg.hidden_size, qkv_out,
                                    bias=(not cfg.disable_bias_linear) or cfg.add_qkv_bias)
        self.linear_proj = nn.Linear(cfg.num_attention_heads * self.hd, cfg.hidden_size,
                                     bias=not cfg.disable_bias_linear)
        if getattr(cfg, "qk_layernorm", False):
            self.q_layernorm, self.k_layernorm = make_norm(cfg, self.hd), make_norm(cfg, self.hd)
        else:
            self.q_layernorm = self.k_layernorm = None
        scalar = getattr(cfg, "query_pre_attn_scalar", None)
        self.scale = scalar ** -0.5 if scalar else None  # None: SDPA's 1/sqrt(head_dim)
        self.window = layer_window(cfg, layer_number)
        self.dropout_p = cfg.attention_dropout
        self.backend = cfg.attention_backend
        self.recompute_core = cfg.recompute_granularity == "selective"
        self.sharded_rng = contextlib.nullcontext  # set from outside under tensor parallelism

    def local_heads(self) -> int:
        """Query heads this module computes (all of them, or this rank's share under TP)."""
        groups = self.linear_qkv.weight.shape[0] // ((self.q_per_group + 2) * self.hd)
        return groups * self.q_per_group

    def prepare(self, documents, dtype: torch.dtype, device) -> str:
        """Build on ``documents`` (a DocumentPlan) what this module's backend will read, for q of
        ``dtype`` on ``device``; returns the backend that runs. Every layer shares the result."""
        window = {"window": self.window} if self.window is not None else {}
        return prepare_documents(documents, self.backend, device=device, dtype=dtype,
                                 width=self.local_heads() * self.hd,
                                 dropout_p=self.dropout_p if self.training else 0.0, **window)

    def _core(self, q, k, v, documents):
        window = {"window": self.window} if self.window is not None else {}
        with self.sharded_rng():  # heads are split over TP: dropout must differ per shard
            return attention(q, k, v, documents=documents, backend=self.backend, scale=self.scale,
                             dropout_p=self.dropout_p if self.training else 0.0, **window)

    def forward(self, x, rope=None, documents=None):
        """x [b, s, h] (a sequence shard under SP); documents: a DocumentPlan or None."""
        qkv = self.linear_qkv(x)  # under sequence parallelism x is a shard; qkv is the full sequence
        b, s = qkv.shape[:2]
        groups = qkv.shape[-1] // ((self.q_per_group + 2) * self.hd)  # local groups under TP
        qkv = qkv.view(b, s, groups, self.q_per_group + 2, self.hd)
        # one split (backward: one cat of the three gradients), not a slice and two selects (each
        # a zero-filled qkv-sized gradient, summed)
        q, k, v = qkv.split([self.q_per_group, 1, 1], dim=3)
        q = q.reshape(b, s, groups * self.q_per_group, self.hd).transpose(1, 2)
        k, v = k.squeeze(3).transpose(1, 2), v.squeeze(3).transpose(1, 2)
        if self.q_layernorm is not None:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.recompute_core and self.training:
            out = checkpoint(self._core, q, k, v, documents, use_reentrant=False)
        else:
            out = self._core(q, k, v, documents)
        return self.linear_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """fc2(act(fc1(x))); gated (SwiGLU, GeGLU): fc2(act(gate(x)) * up(x)) with fc1 = [gate; up]."""

    def __init__(self, cfg):
        super().__init__()
        self.swiglu, self.gated = cfg.swiglu, cfg.swiglu or getattr(cfg, "geglu", False)
        self.approximate = "tanh" if getattr(cfg, "openai_gelu", False) else "none"
        out = cfg.ffn_hidden_size * (2 if self.gated else 1)
        self.linear_fc1 = nn.Linear(cfg.hidden_size, out, bias=not cfg.disable_bias_linear)
        self.linear_fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=not cfg.disable_bias_linear)

    def forward(self, x):
        y = self.linear_fc1(x)
        if self.swiglu:
            gate, up = y.chunk(2, dim=-1)
            y = F.silu(gate) * up
        elif self.gated:
            gate, up = y.chunk(2, dim=-1)
            y = F.gelu(gate, approximate=self.approximate) * up
        else:
            y = F.gelu(y, approximate=self.approximate)
        return self.linear_fc2(y)


class TransformerLayer(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))); with sandwich norms
    x + drop(post_norm(attn(norm(x)))) and likewise for the MLP. ``layer_number`` (0-based, global)
    picks the layer's attention window and RoPE (``rope_key``: "local" on Gemma 3's sliding layers)."""

    def __init__(self, cfg, layer_number: int = 0):
        super().__init__()
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attention = SelfAttention(cfg, layer_number)
        self.pre_mlp_layernorm = make_norm(cfg, cfg.hidden_size)
        self.mlp = MLP(cfg)
        if getattr(cfg, "sandwich_norm", False):
            self.post_self_attn_layernorm = make_norm(cfg, cfg.hidden_size)
            self.post_mlp_layernorm = make_norm(cfg, cfg.hidden_size)
        else:
            self.post_self_attn_layernorm = self.post_mlp_layernorm = None
        local = self.self_attention.window is not None and getattr(cfg, "rope_local_base_freq", None) is not None
        self.rope_key = "local" if local else "global"
        self.hidden_dropout = cfg.hidden_dropout
        # dropout of the residual stream: replicated over TP (same mask everywhere) unless sequence
        # parallelism shards it, then parallelize sets a per-TP-rank RNG context here
        self.sharded_rng = contextlib.nullcontext

    def forward(self, x, rope=None, documents=None):
        """x [b, s, h]; rope: (cos, sin), or {"global": (cos, sin), "local": ...}, or None;
        documents: a DocumentPlan (prepared) or None."""
        if isinstance(rope, dict):
            rope = rope[self.rope_key]
        p = self.hidden_dropout if self.training else 0.0
        attn = self.self_attention(self.input_layernorm(x), rope, documents)
        if self.post_self_attn_layernorm is not None:
            attn = self.post_self_attn_layernorm(attn)
        with self.sharded_rng():
            x = x + F.dropout(attn, p, self.training)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        if self.post_mlp_layernorm is not None:
            mlp = self.post_mlp_layernorm(mlp)
        with self.sharded_rng():
            return x + F.dropout(mlp, p, self.training)
