"""Zero-1 (``--use-distributed-optimizer``): which parameter pieces this DP rank updates, and how
its optimizer state is gathered into whole per-parameter tensors for checkpoints.

Gradients are reduce-scattered per bucket (data_parallel.GradBuffers), so DP rank r owns the r-th
part of every bucket. Its fp32 masters and Adam moments exist for exactly those elements; after
the step the updated parameter parts are all-gathered (with ``--overlap-param-gather`` during the
next forward: data_parallel.GradBuffers.gather_params). Memory per parameter, d = DP size:
bf16 params + fp32 grads 6 + 12/d bytes, fp32 8 + 8/d (reference-facts.md), plus bucket padding.
A checkpoint save gathers the states bucket by bucket to the host of DP rank 0 (the writer), so it
needs one bucket of device memory, not another copy of the whole buffer per state kind.
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
def gather_full_states(opt, states: dict, dst: int = 0) -> list:
    """Whole per-parameter optimizer states for the checkpoint writer, one bucket at a time.

    ``states``: {kind: [tensor of each slot's owned range, or None]} (optimizer ``_slot_states``).
    For each state kind and bucket, every DP rank puts its owned part (fp32, zero padding) into a
    buffer of ``bucket/DP`` elements, all-gathers the bucket into one fp32 buffer of the bucket's
    size on the buffers' device, and DP rank ``dst`` copies each parameter's range of it to host
    memory; both device buffers are dropped before the next bucket. So the largest allocation is
    one bucket in fp32 (never the whole buffer: ~16 B/param on every DP rank before), and the
    host copies exist only on the writer. Collective over DP: every DP rank calls it, in the same
    bucket order.

    Returns on DP rank ``dst`` ``[(f"optim.{kind}.{name}", fp32 CPU tensor of the parameter's
    local shape, name)]``, kinds in the order of ``opt.flat_state_kinds()`` (the rule's state after
    the first step: exp_avg, exp_avg_sq for AdamW, momentum_buffer for SGD; master for 16-bit
    parameters; ema with --ema-decay), parameters in model order: the same entries and values as
    gathering whole buffers gave. Other DP ranks get ``[]`` (they write no optimizer state).
    """
    buffers = opt.buffers
    device = buffers.data.device
    writer = buffers.dp_rank == dst
    kinds = opt.flat_state_kinds()  # the same on every rank
    by_param: dict = {}  # id(param) -> [(slot index, slot)]
    for i, s in enumerate(opt.slots):
        by_param.setdefault(id(s.param), []).append((i, s))
    out = []
    for kind in kinds:
        per_slot, host = states[kind], {}
        for b in buffers.buckets:
            lo, hi = buffers.shard(b)
            part = torch.zeros(hi - lo, dtype=torch.float32, device=device)
            for p in b.params:
                off = buffers.param_index[id(p)]
                for i, s in by_param.get(id(p), ()):
                    if per_slot[i] is not None:
                        part[off + s.a - lo:off + s.z - lo].copy_(per_slot[i].reshape(-1))
            if buffers.dp > 1:
                full = torch.empty(b.end - b.start, dtype=torch.float32, device=device)
                comm.all_gather_into(full, part, buffers.group)
            else:
                full = part
            if writer:
                for p in b.params:
                    off = buffers.param_index[id(p)] - b.start
                    host[id(p)] = full[off:off + p.numel()].to("cpu", copy=True).view_as(p)
            del part, full  # the device buffers go before the next bucket's
        if writer:
            out += [(f"optim.{kind}.{n}", host[id(p)], n) for n, p in zip(opt.names, opt.params)
                    if not (kind == "master" and p.dtype == torch.float32)]
    return out
