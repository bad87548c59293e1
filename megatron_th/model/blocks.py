"""Transformer building blocks: norms, RoPE, self-attention, MLP, layer.

Plain ``nn.Linear`` everywhere; tensor parallelism swaps them from outside (parallelize.py). The
modules infer their local head count from the projection output, so a TP shard runs the same code.

Layouts that conversion and TP rely on:
- ``linear_qkv`` rows are grouped per key/value group: for each of ``ng`` groups, ``np/ng`` query
  heads, then that group's K head, then its V head (``kv_channels`` rows each). A TP shard holds
  whole groups.
- ``linear_fc1`` under SwiGLU is ``[gate; up]``; ``down(silu(gate(x)) * up(x))``.
- RoPE rotates dimension i with i + hd/2 (HF Llama's ``rotate_half``), theta = ``rotary_base``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_th.model.attention import attention, prepare_documents


def make_norm(cfg, width: int) -> nn.Module:
    if cfg.normalization == "RMSNorm":
        return nn.RMSNorm(width, eps=cfg.norm_epsilon)
    return nn.LayerNorm(width, eps=cfg.norm_epsilon)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given position ids (positions may restart per document)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=position_ids.device) / self.head_dim
        inv_freq = (1.0 / self.base ** exps).float()
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, hd]
        return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)  # [b, 1, s, hd]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.hd = cfg.kv_channels
        self.q_per_group = cfg.num_attention_heads // cfg.num_query_groups
        qkv_out = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * self.hd
        self.linear_qkv = nn.Linear(cfg.hidden_size, qkv_out,
                                    bias=(not cfg.disable_bias_linear) or cfg.add_qkv_bias)
        self.linear_proj = nn.Linear(cfg.num_attention_heads * self.hd, cfg.hidden_size,
                                     bias=not cfg.disable_bias_linear)
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
        return prepare_documents(documents, self.backend, device=device, dtype=dtype,
                                 width=self.local_heads() * self.hd,
                                 dropout_p=self.dropout_p if self.training else 0.0)

    def _core(self, q, k, v, documents):
        with self.sharded_rng():  # heads are split over TP: dropout must differ per shard
            return attention(q, k, v, documents=documents, backend=self.backend,
                             dropout_p=self.dropout_p if self.training else 0.0)

    def forward(self, x, rope=None, documents=None):
        """x [b, s, h] (a sequence shard under SP); documents: a DocumentPlan or None."""
        qkv = self.linear_qkv(x)  # under sequence parallelism x is a shard; qkv is the full sequence
        b, s = qkv.shape[:2]
        groups = qkv.shape[-1] // ((self.q_per_group + 2) * self.hd)  # local groups under TP
        qkv = qkv.view(b, s, groups, self.q_per_group + 2, self.hd)
        q = qkv[:, :, :, : self.q_per_group].reshape(b, s, groups * self.q_per_group, self.hd).transpose(1, 2)
        k = qkv[:, :, :, -2].transpose(1, 2)
        v = qkv[:, :, :, -1].transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.recompute_core and self.training:
            out = checkpoint(self._core, q, k, v, documents, use_reentrant=False)
        else:
            out = self._core(q, k, v, documents)
        return self.linear_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.swiglu = cfg.swiglu
        self.approximate = "tanh" if getattr(cfg, "openai_gelu", False) else "none"
        out = cfg.ffn_hidden_size * (2 if cfg.swiglu else 1)
        self.linear_fc1 = nn.Linear(cfg.hidden_size, out, bias=not cfg.disable_bias_linear)
        self.linear_fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=not cfg.disable_bias_linear)

    def forward(self, x):
        y = self.linear_fc1(x)
        if self.swiglu:
            gate, up = y.chunk(2, dim=-1)
            y = F.silu(gate) * up
        else:
            y = F.gelu(y, approximate=self.approximate)
        return self.linear_fc2(y)


class TransformerLayer(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.self_attention = SelfAttention(cfg)
        self.pre_mlp_layernorm = make_norm(cfg, cfg.hidden_size)
        self.mlp = MLP(cfg)
        self.hidden_dropout = cfg.hidden_dropout
        # dropout of the residual stream: replicated over TP (same mask everywhere) unless sequence
        # parallelism shards it, then parallelize sets a per-TP-rank RNG context here
        self.sharded_rng = contextlib.nullcontext

    def forward(self, x, rope=None, documents=None):
        """x [b, s, h]; rope: (cos, sin) or None; documents: a DocumentPlan (prepared) or None."""
        p = self.hidden_dropout if self.training else 0.0
        attn = self.self_attention(self.input_layernorm(x), rope, documents)
        with self.sharded_rng():
            x = x + F.dropout(attn, p, self.training)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        with self.sharded_rng():
            return x + F.dropout(mlp, p, self.training)
