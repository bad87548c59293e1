"""Zero-1 (``--use-distributed-optimizer``): which parameter pieces this DP rank updates, and how
its optimizer state is gathered into whole per-parameter tensors for checkpoints.

Gradients are reduce-scattered per bucket (data_parallel.GradBuffers), so DP rank r owns the r-th
part of every bucket. Its fp32 masters and Adam moments exist for exactly those elements; after
the step the updated parameter parts are all-gathered. Memory per parameter, d = DP size:
bf16 params + fp32 grads 6 + 12/d bytes, fp32 8 + 8/d (reference-facts.md), plus bucket padding.
"""
from __future__ import annotations

import torch

from megatron_th.parallel import comm


def owned_slots(params: list, buffers, slot_cls) -> list:
    """One slot per (parameter, owned range) pair, in bucket order."""
    index = {id(p): i for i, p in enumerate(params)}
    slots = []
    for b in buffers.buckets:
        lo, hi = buffers.shard(b)
        for p in b.params:
            off = buffers.param_index[id(p)]
            a, z = max(lo, off), min(hi, off + p.numel())
            if a < z:
                slots.append(slot_cls(index[id(p)], p, a - off, z - off))
    return slots


@torch.no_grad()
def gather_full_states(opt, states: dict) -> list:
    """All-gather each state kind over DP, bucket by bucket, and cut it into per-parameter tensors
    of the parameter's local shape. Collective: every DP rank calls it."""
    buffers = opt.buffers
    out = []
    kinds = (["exp_avg", "exp_avg_sq"] if opt.num_steps else []) + \
        (["master"] if any(p.dtype != torch.float32 for p in opt.params) else [])  # same on every rank
    for kind in kinds:
        per_slot = states[kind]
        full = torch.zeros(buffers.numel, dtype=torch.float32, device=buffers.data.device)
        for s, t in zip(opt.slots, per_slot):
            if t is not None:
                off = buffers.param_index[id(s.param)]
                full[off + s.a:off + s.z].copy_(t.reshape(-1))
        for b in buffers.buckets:
            lo, hi = buffers.shard(b)
            if buffers.dp > 1:
                comm.all_gather_into(full[b.start:b.end], full[lo:hi].clone(), buffers.group)
        for n, p in zip(opt.names, opt.params):
            if kind == "master" and p.dtype == torch.float32:
                continue
            off = buffers.param_index[id(p)]
            out.append((f"optim.{kind}.{n}", full[off:off + p.numel()].view_as(p).clone(), n))
    return out
