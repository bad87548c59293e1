"""Activation memory: what autograd keeps for backward, term by term, and what a pipeline holds.

Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", count
per layer ``s*b*h*(34 + 5*a*s/h)`` bytes for 16-bit activations, 1-byte dropout masks and an
attention that stores its ``a*s*s`` probabilities. The same bookkeeping is done here op by op for
OUR block (model/blocks.py: pre-norm LayerNorm or RMSNorm, optionally (1 + w) and sandwich norms,
QK-norm, GeLU, SwiGLU or GeGLU, GQA, RoPE, sliding windows), with the kernel behaviour as
parameters (``Kernels``): activation bytes, dropout-mask bytes, whether the attention kernel stores
the probabilities, whether RMSNorm is torch's composite (fp32 copies), whether sequence-parallel
column layers save the all-gathered input (ours) or the shard (Megatron), and whether a sliding
window is an explicit ``[s, s]`` mask. With ``MEGATRON_KERNELS`` and a GPT-2 block the terms add up
to Korthikanti's formulas exactly (up to the norms' statistics, which the paper neglects); the head
and loss are loss_memory.py. docs/estimate.md derives every term.

Units: bytes for one micro-batch of ``b`` sequences on one TP rank.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_th.estimate import loss_memory
from megatron_th.parallel.schedule_order import chunk, micro_batch, order


@dataclass(frozen=True)
class Kernels:
    act_bytes: int                   # D: bytes per activation element (2 bf16/fp16, 4 fp32)
    mask_bytes: int                  # M: bytes per dropout-mask element (1 bool on CUDA, D on CPU)
    scores_stored: bool              # attention keeps softmax (+ dropout) of [b, a, s, s] (math path)
    rmsnorm_composite: bool          # torch's composite RMSNorm (CPU): keeps x and x * rstd in fp32
    sp_saves_gathered: bool          # under SP, qkv/fc1 keep the all-gathered input (ours), not the shard
    stat_bytes: int = 4              # bytes per LayerNorm statistic (mean, rstd) per token
    window_mask_stored: bool = False  # a sliding window is an explicit [s, s] mask SDPA keeps (CPU sdpa)
    math_bytes: int | None = None    # bytes per element inside the math path (CPU: fp32 whatever D); None: D / M


# Korthikanti et al.'s assumptions (Megatron-LM on GPU, 16-bit, unfused attention).
MEGATRON_KERNELS = Kernels(act_bytes=2, mask_bytes=1, scores_stored=True, rmsnorm_composite=False,
                           sp_saves_gathered=False, stat_bytes=0)


def kernels_for(m, prec: str, device: str = "cuda") -> Kernels:
    """What our model's kernels save. CPU (measured, torch 2.13): dropout masks and LayerNorm
    statistics in the activation dtype; SDPA's flash kernel without dropout, the math path
    (probabilities stored, computed in fp32 also for bf16 inputs) with it; composite RMSNorm; a
    sliding window as a banded ``[s, s]`` mask that the flash kernel converts to the activation dtype
    and keeps (the math path applies it and keeps nothing of it). CUDA: bool masks, fp32 statistics,
    flash/memory-efficient SDPA (no s x s), fused RMSNorm (input + rstd), windows inside the kernel
    (flash-attn's window_size, flex's block mask)."""
    d = 4 if prec == "fp32" else 2
    if device == "cpu":
        return Kernels(d, d, m.attention_dropout > 0, True, True, stat_bytes=d, window_mask_stored=True, math_bytes=4)
    return Kernels(d, 1, False, False, True)


def _norm(m, tokens: int, width: int, k: Kernels, input_saved: bool = False) -> int:
    """A norm over ``tokens`` rows of ``width``: its input (unless ``input_saved``: a view of a
    storage counted elsewhere, as QK-norm's k of the qkv output) and statistics (LayerNorm: mean
    and rstd; fused RMSNorm: rstd). torch's composite RMSNorm, and ours with ``apply_layernorm_1p``
    (model/norms.py, every device), upcast: x in fp32 (a copy unless x is fp32 already), x * rstd in
    fp32 and an fp32 rstd; the (1 + w) gain is one more fp32 ``[width]``. LayerNorm1p keeps ``w + 1``
    in the parameter dtype."""
    one_p = getattr(m, "apply_layernorm_1p", False)
    if m.normalization == "RMSNorm":
        if k.rmsnorm_composite or one_p:
            upcast = 0 if (input_saved and k.act_bytes >= 4) else tokens * width * 4
            return upcast + tokens * width * 4 + tokens * 4 + (width * 4 if one_p else 0)
        return (0 if input_saved else tokens * width * k.act_bytes) + tokens * k.stat_bytes
    return ((0 if input_saved else tokens * width * k.act_bytes) + tokens * k.stat_bytes * 2
            + (width * k.act_bytes if one_p else 0))


def layer_terms(m, s: int, b: int, tp: int = 1, sp: bool = False, recompute: str | None = None,
                k: Kernels = MEGATRON_KERNELS, window: int | None = None) -> dict:
    """Bytes one transformer layer keeps for backward, by term. ``window``: the layer's sliding
    window (model/blocks.py ``layer_window``; None: full causal attention)."""
    D, M = k.act_bytes, k.mask_bytes
    h, hd = m.hidden_size, m.kv_channels
    sp = sp and tp > 1
    tok = s * b
    tok_local = tok // tp if sp else tok            # the residual stream is a sequence shard under SP
    x_lin = tok if (not sp or k.sp_saves_gathered) else tok_local  # tokens entering qkv / fc1
    if recompute == "full":                          # only the checkpointed layer's input is kept
        return {"layer input (full recompute)": tok_local * h * D}
    nq, ng = m.num_attention_heads // tp, m.num_query_groups // tp
    q, kv = tok * nq * hd, tok * ng * hd
    rope = m.position_embedding_type == "rope"
    qk_norm = getattr(m, "qk_layernorm", False)
    q_view = nq == ng or ng == 1                     # q is a view of the qkv output (else a per-head copy)
    q_copy = q if (rope or qk_norm or not q_view) else 0  # what attention receives is a new tensor
    k_copy = kv if (rope or qk_norm) else 0
    t = {"norms: inputs and statistics": 2 * _norm(m, tok_local, h, k),
         "qkv and fc1 inputs": 2 * x_lin * h * D}
    if qk_norm:  # per head over head_dim, before RoPE: q (a view or the copy), k (a view of the qkv output)
        t["q and k norms (QK-norm)"] = (_norm(m, tok * nq, hd, k, input_saved=q_view)
                                        + _norm(m, tok * ng, hd, k, input_saved=True))
    if recompute == "selective":                     # the checkpointed core keeps its inputs q, k, v
        t["attention core inputs (selective recompute)"] = (q + 2 * kv + q_copy + k_copy) * D
        t["proj input"] = q * D
    elif k.scores_stored:  # the math path keeps its own (scaled, expanded) q, k, v, not the qkv output
        dm, mm = k.math_bytes or D, k.math_bytes or M
        t["q, k, v (k, v expanded to all heads)"] = 3 * q * dm
        probs = b * nq * s * s
        t["attention probabilities"] = probs * (dm + (dm + mm if m.attention_dropout > 0 else 0))
        t["proj input"] = q * D
        upcasts = m.normalization == "RMSNorm" and (k.rmsnorm_composite or getattr(m, "apply_layernorm_1p", False))
        if qk_norm and not (upcasts and D < 4):  # ... but the k norm keeps its input, a view of it
            t["qkv output (kept by the k norm)"] = (q + 2 * kv) * D
    else:  # the flash output is laid out as q: [b, s, heads, hd] and the proj input a view of it,
        # except after torch's norm kernels (QK-norm), whose output is contiguous per head: then
        # the proj input is a copy (the (1 + w) RMSNorm is elementwise and keeps q's layout)
        t["q, k, v (flash attention)"] = (q + 2 * kv + q_copy + k_copy) * D
        t["attention output (= proj input) + logsumexp"] = q * D + b * nq * s * 4
        if qk_norm and not (m.normalization == "RMSNorm" and getattr(m, "apply_layernorm_1p", False)):
            t["proj input (copy of the per-head output)"] = q * D
    if (window is not None and window < s and k.window_mask_stored and not k.scores_stored
            and recompute != "selective"):
        t["sliding-window mask [s, s]"] = s * s * D
    if getattr(m, "sandwich_norm", False):
        t["post-attention and post-MLP norms (sandwich)"] = 2 * _norm(m, tok_local, h, k)
    f = m.ffn_hidden_size // tp
    if m.gated_linear_unit:
        t["mlp: gate/up, " + ("silu" if m.swiglu else "gelu") + ", fc2 input"] = tok * f * D * 4
    else:
        t["mlp: gelu input, fc2 input"] = tok * f * D * 2
    if m.hidden_dropout > 0:
        t["dropout masks"] = 2 * tok_local * h * M
    return t


def embedding_terms(m, s: int, b: int, tp: int = 1, sp: bool = False, k: Kernels = MEGATRON_KERNELS) -> dict:
    """First stage: token ids (the vocab-parallel lookup also keeps its out-of-shard mask),
    position ids (learned positions), the embedding dropout mask, the sqrt(h) scale (a scalar
    in the activation dtype, with ``scale_embeddings``)."""
    tok = s * b
    t = {"token ids": tok * 8 + (tok if tp > 1 else 0)}
    if m.position_embedding_type == "learned_absolute":
        t["position ids"] = tok * 8
    if getattr(m, "scale_embeddings", False):
        t["embedding scale"] = k.act_bytes
    if m.hidden_dropout > 0:
        t["embedding dropout mask"] = (tok // tp if sp and tp > 1 else tok) * m.hidden_size * k.mask_bytes
    return t


def head_terms(m, s: int, b: int, vocab: int, padded_vocab: int, tp: int = 1, sp: bool = False,
               k: Kernels = MEGATRON_KERNELS) -> dict:
    """Last stage: final norm, head input, what the loss keeps (loss_memory.py: the fp32
    log-probabilities or softmax shard and targets when the micro-batch fits one loss chunk, else
    18 bytes per token), the loss mask."""
    tok = s * b
    sp = sp and tp > 1
    tok_local = tok // tp if sp else tok
    x_lin = tok if (not sp or k.sp_saves_gathered) else tok_local
    t = {"final norm": _norm(m, tok_local, m.hidden_size, k), "head input": x_lin * m.hidden_size * k.act_bytes}
    t.update(loss_memory.saved_terms(tok, vocab, padded_vocab, tp))
    t["loss mask"] = tok * 4
    return t


def layer_windows(m, first: int, count: int) -> list:
    """The attention window of layers ``first ... first + count - 1`` (None: full attention)."""
    from megatron_th.model.blocks import layer_window

    return [layer_window(m, i) for i in range(first, first + count)]


def rope_bytes(m, s: int, b: int, k: Kernels, windows: list | None = None, recompute: str | None = None) -> int:
    """cos and sin tables [b, 1, s, head_dim], computed once per stage and shared by its layers:
    the global tables, and with ``rope_local_base_freq`` the sliding layers' own (each kept when
    a layer of the chunk uses it, or by reference under full recompute). ``windows``: the chunk's
    layer windows (None: one global table pair)."""
    if m.position_embedding_type != "rope":
        return 0
    pair = 2 * b * s * m.kv_channels * k.act_bytes
    if windows is None or getattr(m, "rope_local_base_freq", None) is None:
        return pair
    full = recompute == "full"
    uses_global = full or any(w is None for w in windows)
    uses_local = full or any(w is not None for w in windows)
    return pair * (int(uses_global) + int(uses_local))


def chunk_bytes(m, s, b, vocab, padded_vocab, tp, sp, recompute, k, layers: int, pre: bool, post: bool,
                first_layer: int = 0) -> dict:
    """One micro-batch's saved activations on one model chunk (layers ``first_layer ...
    first_layer + layers - 1``), by part."""
    windows = layer_windows(m, first_layer, layers)
    per_window = {w: sum(layer_terms(m, s, b, tp, sp, recompute, k, window=w).values()) for w in set(windows)}
    out = {"layers": sum(per_window[w] for w in windows), "rope tables": rope_bytes(m, s, b, k, windows, recompute)}
    if pre:
        out["embedding"] = sum(embedding_terms(m, s, b, tp, sp, k).values())
    if post:
        out["head and loss"] = sum(head_terms(m, s, b, vocab, padded_vocab, tp, sp, k).values())
    return out


def inflight(p: int, rank: int, m: int, v: int, per_chunk: list[float]) -> tuple[float, int]:
    """(peak bytes, micro-batch chunks alive at that moment) of forward activations on PP rank
    ``rank``, by replaying the schedule (parallel/schedule_order.py): 1F1B holds at most
    ``min(p - rank, m)`` micro-batches of its L/p layers (rank 0: L layers' worth); interleaved 1F1B
    ``2(p - rank - 1) + (v - 1)p + 1`` chunks of L/(p v) layers, on rank 0 ``L (1 + (p-1)/(p v))``
    layers' worth (Megatron's factor). The steady state repeats every p*v ops, so m is capped at
    4p for the replay (same peak, bounded work; tests compare with the full schedule)."""
    if v == 1:
        n = min(p - rank, m)
        return n * per_chunk[0], n
    m_eff = min(m, 4 * p)
    live: dict = {}
    peak, peak_n, cur = 0.0, 0, 0.0
    for kind, i in order(p, rank, m_eff, v):
        key = (micro_batch(i, p, v), chunk(i, p, v, kind == "F"))
        if kind == "F":
            live[key] = per_chunk[key[1]]
            cur += live[key]
            if cur > peak:
                peak, peak_n = cur, len(live)
        else:
            cur -= live.pop(key)
    return peak, peak_n


def p2p_send_bytes(p: int, rank: int, m: int, v: int, s: int, b: int, h: int, tp: int, sp: bool, D: int) -> int:
    """Bytes this pipeline rank sends per step (parallel/pipeline.py): per chunk, one
    ``[b, s (/TP under SP), h]`` tensor per micro-batch and direction. Communication volume, not
    memory: a sent tensor is freed as soon as its send completes."""
    if p == 1:
        return 0
    nvs = p * v
    act = b * (s // tp if sp and tp > 1 else s) * h * D
    sends = sum((c * p + rank < nvs - 1) + (c * p + rank > 0) for c in range(v))
    return m * sends * act
