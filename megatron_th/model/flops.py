"""Training FLOPs of a GPT step, counted matmul by matmul (Narayanan et al. 2021, generalised).

Per token and layer the forward pass does ``2 * (weights of qkv, proj, fc1, fc2)`` FLOPs plus
``4 * s * heads * head_dim`` for QK^T and AV (full, not causal-halved, as Megatron counts); the
logits add ``2 * h * V``. Backward costs twice the forward; full recompute adds one more forward of
the layers (not of the logits). For MHA, GeLU with ffn = 4h this equals Megatron's
``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` with recompute, ``72 B s l h^2 (1 + s/(6h) + V/(12 l h))``
without.
"""
from __future__ import annotations


def layer_forward_flops_per_token(cfg, seq_length: int) -> float:
    h, hd = cfg.hidden_size, cfg.kv_channels
    np_, ng = cfg.num_attention_heads, cfg.num_query_groups
    qkv = h * (np_ + 2 * ng) * hd
    proj = np_ * hd * h
    fc1 = h * cfg.ffn_hidden_size * (2 if cfg.swiglu else 1)
    fc2 = cfg.ffn_hidden_size * h
    return 2.0 * (qkv + proj + fc1 + fc2) + 4.0 * seq_length * np_ * hd


def flops_per_iteration(cfg, global_batch_size: int, seq_length: int, vocab_size: int,
                        recompute: bool = False) -> float:
    """Model FLOPs (recompute=False, for MFU) or hardware FLOPs (recompute=True, for HFU)."""
    tokens = global_batch_size * seq_length
    layers = cfg.num_layers * layer_forward_flops_per_token(cfg, seq_length) * tokens
    logits = 2.0 * cfg.hidden_size * vocab_size * tokens
    return (4.0 if recompute else 3.0) * layers + 3.0 * logits
