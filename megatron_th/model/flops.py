"""Training FLOPs of a GPT step, counted matmul by matmul (Narayanan et al. 2021, generalised).

Per token and layer the forward pass does ``2 * (weights of qkv, proj, fc1, fc2)`` FLOPs plus
``4 * K * heads * head_dim`` for QK^T and AV, where K is the keys counted per query; the logits add
``2 * h * V``. Backward costs twice the forward; full recompute adds one more forward of the
layers (not of the logits), selective recompute one more forward of the attention core, and a
loss that recomputes its logits chunk by chunk (model/loss.py) one more ``2 * h * V`` (hardware
FLOPs only). For MHA, GeLU with ffn = 4h this equals Megatron's
``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` with recompute, ``72 B s l h^2 (1 + s/(6h) + V/(12 l h))``
without.

Keys per query (``attention_keys_per_query``). Megatron counts the full ``s x s`` score matrix for
a causal layer, K = s, although query i attends to only i + 1 keys. That count is exactly the
number of (query, key) pairs of the causal mask's symmetric closure, ``|i - j| < s``:
``2 * s(s+1)/2 - s = s^2``. A sliding-window layer (window W: query i attends to
``min(W, i + 1)`` keys, model/attention.py) is counted the same way, as the pairs with
``|i - j| < W``: ``2 * sum_i min(W, i + 1) - s = s (2W - 1) - W (W - 1)`` for W < s, so per query

    K(W) = 2W - 1 - W (W - 1) / s        (W < s),        K = s        (W >= s or no window).

So a window never counts more than a full layer, K(s) = s, and the ratio between windowed and
full layers is that of the keys they really attend to (about 2W / s for W << s). Document
masking is not counted (neither does Megatron).
"""
from __future__ import annotations


def attention_keys_per_query(seq_length: int, window: int | None = None) -> float:
    """K above: keys counted per query for a layer with ``window`` (None: full causal)."""
    s = seq_length
    if window is None or window >= s:
        return float(s)
    return 2.0 * window - 1.0 - window * (window - 1.0) / s


def _windows(cfg) -> list:
    from megatron_th.model.blocks import layer_window

    return [layer_window(cfg, i) for i in range(cfg.num_layers)]


def attention_core_flops_per_token(cfg, seq_length: int, window: int | None = None) -> float:
    """QK^T and attention-weighted V of one layer (attention ``window``), forward (what selective
    recompute repeats)."""
    return 4.0 * attention_keys_per_query(seq_length, window) * cfg.num_attention_heads * cfg.kv_channels


def dense_flops_per_token(cfg) -> float:
    """The weight matmuls of one layer (qkv, proj, fc1, fc2), forward."""
    h, hd = cfg.hidden_size, cfg.kv_channels
    np_, ng = cfg.num_attention_heads, cfg.num_query_groups
    qkv = h * (np_ + 2 * ng) * hd
    proj = np_ * hd * h
    fc1 = h * cfg.ffn_hidden_size * (2 if cfg.gated_linear_unit else 1)
    fc2 = cfg.ffn_hidden_size * h
    return 2.0 * (qkv + proj + fc1 + fc2)


def layer_forward_flops_per_token(cfg, seq_length: int, window: int | None = None) -> float:
    return dense_flops_per_token(cfg) + attention_core_flops_per_token(cfg, seq_length, window)


def flops_per_iteration(cfg, global_batch_size: int, seq_length: int, vocab_size: int,
                        recompute: bool | str | None = False, logits_recompute: bool = False) -> float:
    """Model FLOPs (recompute False/None, for MFU) or hardware FLOPs (for HFU) with recompute
    True / "full" (one more forward of every layer) or "selective" (one more forward of the
    attention core); ``logits_recompute``: the chunked loss computes the logits once more in
    backward. Each layer's attention is counted with its own window (``layer_types``)."""
    tokens = global_batch_size * seq_length
    dense = dense_flops_per_token(cfg)
    core = sum(attention_core_flops_per_token(cfg, seq_length, w) for w in _windows(cfg))
    layers = dense * cfg.num_layers + core  # one forward of every layer, per token
    extra = {False: 0.0, None: 0.0, True: layers, "full": layers, "selective": core}[recompute]
    logits = 2.0 * cfg.hidden_size * vocab_size * tokens
    return (3.0 * layers + extra) * tokens + (3.0 + (1.0 if logits_recompute else 0.0)) * logits
