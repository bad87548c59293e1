"""Training FLOPs of a GPT step, counted matmul by matmul (Narayanan et al. 2021, generalised).

Per token and layer the forward pass does ``2 * (weights of qkv, proj, fc1, fc2)`` FLOPs plus
``4 * s * heads * head_dim`` for QK^T and AV (full, not causal-halved, as Megatron counts); the
logits add ``2 * h * V``. Backward costs twice the forward; full recompute adds one more forward of
the layers (not of the logits), selective recompute one more forward of the attention core. For
MHA, GeLU with ffn = 4h this equals Megatron's
``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` with recompute, ``72 B s l h^2 (1 + s/(6h) + V/(12 l h))``
without.
"""
from __future__ import annotations


def attention_core_flops_per_token(cfg, seq_length: int) -> float:
    """QK^T and attention-weighted V of one layer, forward (what selective recompute repeats)."""
    return 4.0 * seq_length * cfg.num_attention_heads * cfg.kv_channels


def layer_forward_flops_per_token(cfg, seq_length: int) -> float:
    h, hd = cfg.hidden_size, cfg.kv_channels
    np_, ng = cfg.num_attention_heads, cfg.num_query_groups
    qkv = h * (np_ + 2 * ng) * hd
    proj = np_ * hd * h
    fc1 = h * cfg.ffn_hidden_size * (2 if cfg.gated_linear_unit else 1)
    fc2 = cfg.ffn_hidden_size * h
    return 2.0 * (qkv + proj + fc1 + fc2) + attention_core_flops_per_token(cfg, seq_length)


def flops_per_iteration(cfg, global_batch_size: int, seq_length: int, vocab_size: int,
                        recompute: bool | str | None = False) -> float:
    """Model FLOPs (recompute False/None, for MFU) or hardware FLOPs (for HFU) with recompute
    True / "full" (one more forward of every layer) or "selective" (one more forward of the
    attention core)."""
    tokens = global_batch_size * seq_length
    layer = layer_forward_flops_per_token(cfg, seq_length)
    extra = {False: 0.0, None: 0.0, True: layer, "full": layer,
             "selective": attention_core_flops_per_token(cfg, seq_length)}[recompute]
    logits = 2.0 * cfg.hidden_size * vocab_size * tokens
    return (3.0 * layer + extra) * cfg.num_layers * tokens + 3.0 * logits
