"""Activation memory: what autograd keeps for backward, term by term, and what a pipeline holds.

Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", count
per layer ``s*b*h*(34 + 5*a*s/h)`` bytes for 16-bit activations, 1-byte dropout masks and an
attention that stores its ``a*s*s`` probabilities. The same bookkeeping is done here op by op for
OUR block (models/blocks.py: pre-norm LayerNorm or RMSNorm, GeLU or SwiGLU, GQA, RoPE), with the
kernel behaviour as parameters (``Kernels``): activation bytes, dropout-mask bytes, whether the
attention kernel stores the probabilities, whether RMSNorm is torch's composite (fp32 copies), and whether
sequence-parallel column layers save the all-gathered input (ours) or the shard (Megatron). With
``MEGATRON_KERNELS`` and a GPT-2 block the terms add up to Korthikanti's formulas exactly
(up to the norms' statistics, which the paper neglects). docs/estimate.md derives every term.

Units: bytes for one micro-batch of ``b`` sequences on one TP rank.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_th.parallel.schedule_order import chunk, micro_batch, order


@dataclass(frozen=True)
class Kernels:
    act_bytes: int                   # D: bytes per activation element (2 bf16/fp16, 4 fp32)
    mask_bytes: int                  # M: bytes per dropout-mask element (1 bool on CUDA, D on CPU)
    scores_stored: bool              # attention keeps softmax (+ dropout) of [b, a, s, s] (math path)
    rmsnorm_composite: bool          # torch's composite RMSNorm (CPU): keeps x and x * rstd in fp32
    sp_saves_gathered: bool          # under SP, qkv/fc1 keep the all-gathered input (ours), not the shard
    stat_bytes: int = 4              # bytes per LayerNorm statistic (mean, rstd) per token


# Korthikanti et al.'s assumptions (Megatron-LM on GPU, 16-bit, unfused attention).
MEGATRON_KERNELS = Kernels(act_bytes=2, mask_bytes=1, scores_stored=True, rmsnorm_composite=False,
                           sp_saves_gathered=False, stat_bytes=0)


def kernels_for(m, prec: str, device: str = "cuda") -> Kernels:
    """What our model's kernels save. CPU (measured, torch 2.13): dropout masks and LayerNorm
    statistics in the activation dtype; SDPA's flash kernel without dropout, the math path
    (probabilities stored) with it; composite RMSNorm. CUDA: bool masks, fp32 statistics,
    flash/memory-efficient SDPA (no s x s), fused RMSNorm (input + rstd)."""
    d = 4 if prec == "fp32" else 2
    if device == "cpu":
        return Kernels(d, d, m.attention_dropout > 0, True, True, stat_bytes=d)
    return Kernels(d, 1, False, False, True)


def _norm(m, tokens: int, width: int, k: Kernels) -> int:
    """A norm over ``tokens`` rows of ``width``: its input and statistics (LayerNorm: mean and rstd;
    fused RMSNorm: rstd); torch's composite RMSNorm upcasts, keeping x and x * rstd in fp32 and
    an fp32 rstd."""
    if m.normalization == "RMSNorm":
        if k.rmsnorm_composite:
            return tokens * width * 8 + tokens * 4
        return tokens * width * k.act_bytes + tokens * k.stat_bytes
    return tokens * width * k.act_bytes + tokens * k.stat_bytes * 2


def layer_terms(m, s: int, b: int, tp: int = 1, sp: bool = False, recompute: str | None = None,
                k: Kernels = MEGATRON_KERNELS) -> dict:
    """Bytes one transformer layer keeps for backward, by term."""
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
    q_copy = q if (rope or nq != ng) else 0          # q is a view of the qkv output only for MHA without RoPE
    k_copy = kv if rope else 0
    t = {"norms: inputs and statistics": 2 * _norm(m, tok_local, h, k),
         "qkv and fc1 inputs": 2 * x_lin * h * D}
    if recompute == "selective":                     # the checkpointed core keeps its inputs q, k, v
        t["attention core inputs (selective recompute)"] = (q + 2 * kv + q_copy + k_copy) * D
        t["proj input"] = q * D
    elif k.scores_stored:
        t["q, k, v (k, v expanded to all heads)"] = 3 * q * D
        probs = b * nq * s * s
        t["attention probabilities"] = probs * (D + (D + M if m.attention_dropout > 0 else 0))
        t["proj input"] = q * D
    else:  # the flash output is laid out [b, s, heads, hd]: the proj input is a view of it
        t["q, k, v (flash attention)"] = (q + 2 * kv + q_copy + k_copy) * D
        t["attention output (= proj input) + logsumexp"] = q * D + b * nq * s * 4
    f = m.ffn_hidden_size // tp
    t["mlp: " + ("gate/up, silu, fc2 input" if m.swiglu else "gelu input, fc2 input")] = tok * f * D * (4 if m.swiglu else 2)
    if m.hidden_dropout > 0:
        t["dropout masks"] = 2 * tok_local * h * M
    return t


def embedding_terms(m, s: int, b: int, tp: int = 1, sp: bool = False, k: Kernels = MEGATRON_KERNELS) -> dict:
    """First stage: token ids (the vocab-parallel lookup also keeps its out-of-shard mask),
    position ids (learned positions), the embedding dropout mask."""
    tok = s * b
    t = {"token ids": tok * 8 + (tok if tp > 1 else 0)}
    if m.position_embedding_type == "learned_absolute":
        t["position ids"] = tok * 8
    if m.hidden_dropout > 0:
        t["embedding dropout mask"] = (tok // tp if sp and tp > 1 else tok) * m.hidden_size * k.mask_bytes
    return t


def head_terms(m, s: int, b: int, vocab: int, padded_vocab: int, tp: int = 1, sp: bool = False,
               k: Kernels = MEGATRON_KERNELS) -> dict:
    """Last stage: final norm, head input, the fp32 log-probabilities the loss keeps (the true
    vocabulary; under TP each rank's padded shard of the softmax), targets, the loss mask."""
    tok = s * b
    sp = sp and tp > 1
    tok_local = tok // tp if sp else tok
    x_lin = tok if (not sp or k.sp_saves_gathered) else tok_local
    t = {"final norm": _norm(m, tok_local, m.hidden_size, k), "head input": x_lin * m.hidden_size * k.act_bytes}
    if tp > 1:
        t["logits: fp32 softmax shard"] = tok * (padded_vocab // tp) * 4
        t["targets"] = tok * (8 + 1)
    else:
        t["logits: fp32 log-probabilities"] = tok * vocab * 4
        t["targets"] = tok * 8
    t["loss mask"] = tok * 4
    return t


def rope_bytes(m, s: int, b: int, k: Kernels) -> int:
    """cos and sin tables [b, 1, s, head_dim], computed once per stage and shared by its layers."""
    return 2 * b * s * m.kv_channels * k.act_bytes if m.position_embedding_type == "rope" else 0


def chunk_bytes(m, s, b, vocab, padded_vocab, tp, sp, recompute, k, layers: int, pre: bool, post: bool) -> dict:
    """One micro-batch's saved activations on one model chunk, by part."""
    out = {"layers": layers * sum(layer_terms(m, s, b, tp, sp, recompute, k).values()),
           "rope tables": rope_bytes(m, s, b, k)}
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
