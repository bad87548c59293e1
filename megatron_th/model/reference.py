"""The single-device reference GPT: plain, obvious, slow. The ground truth for every test.

Same parameter names and layouts as ``GPTModel`` (so a state dict loads into either), but every
computation is spelled out: explicit softmax attention with an explicit causal + same-document
mask, GQA by repeating K/V heads, RoPE on (i, i + hd/2) pairs, no recompute, no fused kernels.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron_th.data.tokenizer import padded_vocab_size


def norm(cfg, width):
    return nn.RMSNorm(width, eps=cfg.norm_epsilon) if cfg.normalization == "RMSNorm" else nn.LayerNorm(width, eps=cfg.norm_epsilon)


def rope(x, pos, base):
    """x [b, heads, s, hd]; pairs dimension i with i + hd/2."""
    hd = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos[:, None, :, None].double() * inv  # [b, 1, s, hd/2]
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        np_, ng, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        self.linear_qkv = nn.Linear(cfg.hidden_size, (np_ + 2 * ng) * hd, bias=(not cfg.disable_bias_linear) or cfg.add_qkv_bias)
        self.linear_proj = nn.Linear(np_ * hd, cfg.hidden_size, bias=not cfg.disable_bias_linear)

    def forward(self, x, pos, doc):
        cfg = self.cfg
        b, s, _ = x.shape
        np_, ng, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        per = np_ // ng
        qkv = self.linear_qkv(x).view(b, s, ng, per + 2, hd)
        q = qkv[:, :, :, :per].reshape(b, s, np_, hd).transpose(1, 2)
        k = qkv[:, :, :, per].transpose(1, 2).repeat_interleave(per, dim=1)
        v = qkv[:, :, :, per + 1].transpose(1, 2).repeat_interleave(per, dim=1)
        if cfg.position_embedding_type == "rope":
            q, k = rope(q, pos, cfg.rotary_base), rope(k, pos, cfg.rotary_base)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        i = torch.arange(s)
        allowed = (i[None, :] <= i[:, None])[None] & (doc[:, :, None] == doc[:, None, :])  # [b, s, s]
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        probs = F.dropout(scores.softmax(-1), cfg.attention_dropout, self.training)
        return self.linear_proj((probs @ v).transpose(1, 2).reshape(b, s, np_ * hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size * (2 if cfg.swiglu else 1), bias=not cfg.disable_bias_linear)
        self.linear_fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=not cfg.disable_bias_linear)

    def forward(self, x):
        h = self.linear_fc1(x)
        if self.cfg.swiglu:
            f = self.cfg.ffn_hidden_size
            h = F.silu(h[..., :f]) * h[..., f:]
        else:
            h = F.gelu(h, approximate="tanh" if self.cfg.openai_gelu else "none")
        return self.linear_fc2(h)


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm, self.self_attention = norm(cfg, cfg.hidden_size), Attention(cfg)
        self.pre_mlp_layernorm, self.mlp = norm(cfg, cfg.hidden_size), MLP(cfg)
        self.p = cfg.hidden_dropout

    def forward(self, x, pos, doc):
        x = x + F.dropout(self.self_attention(self.input_layernorm(x), pos, doc), self.p, self.training)
        return x + F.dropout(self.mlp(self.pre_mlp_layernorm(x)), self.p, self.training)


class ReferenceGPT(nn.Module):
    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        vp = padded_vocab_size(vocab_size, cfg.make_vocab_size_divisible_by)
        self.embedding = nn.Module()
        self.embedding.word_embeddings = nn.Embedding(vp, cfg.hidden_size)
        if cfg.position_embedding_type == "learned_absolute":
            self.embedding.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleDict({str(i): Layer(cfg) for i in range(cfg.num_layers)})
        self.final_norm = norm(cfg, cfg.hidden_size)
        if cfg.untie_embeddings_and_output_weights:
            self.output_layer = nn.Linear(cfg.hidden_size, vp, bias=False)

    def forward(self, tokens, position_ids=None, doc_ids=None, labels=None):
        """doc_ids [b, s]: tokens attend only within their document (None: one document per row)."""
        b, s = tokens.shape
        pos = torch.arange(s).expand(b, s) if position_ids is None else position_ids
        doc = torch.zeros(b, s, dtype=torch.long) if doc_ids is None else doc_ids
        x = self.embedding.word_embeddings(tokens)
        if self.cfg.position_embedding_type == "learned_absolute":
            x = x + self.embedding.position_embeddings(pos)
        x = F.dropout(x, self.cfg.hidden_dropout, self.training)
        for layer in self.layers.values():
            x = layer(x, pos, doc)
        x = self.final_norm(x)
        w = self.output_layer.weight if self.cfg.untie_embeddings_and_output_weights else self.embedding.word_embeddings.weight
        logits = (x @ w.t())[..., : self.vocab_size]
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view(b, s)
