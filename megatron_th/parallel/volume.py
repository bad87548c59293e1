"""Analytic communication volume of one training step, per rank (see docs/parallelism.md).

Bytes are message sizes as the byte counter records them (parallel/comm.py): all-reduce and p2p
the tensor, all-gather the gathered output, reduce-scatter the unreduced input. ``act`` is one
micro-batch's activation ``b*s*h*bytes``; L the layers on this rank; m micro-batches per step.
"""
from __future__ import annotations


def tp_step_bytes(L: int, b: int, s: int, h: int, m: int, sp: bool, dtype_bytes: int = 4,
                  sp_grad_elems: int = 0, has_embedding: bool = True, has_head: bool = True) -> dict:
    """{(op, group): bytes} inside the TP group for one step (TP > 1).

    Without SP, per micro-batch: forward all-reduce after each row-parallel layer (2 per layer) and
    after the vocab-parallel embedding; backward all-reduce of the input gradient of each
    column-parallel layer (2 per layer) and of the head; the vocab-parallel cross entropy reduces
    max, target logit and sum of exponentials (3 fp32 [b, s]). With SP the all-reduces become an
    all-gather (before column-parallel) / reduce-scatter (after row-parallel) pair, forward and
    backward, and the SP-replicated weights (norms, row-parallel biases: ``sp_grad_elems``
    elements) have their gradients all-reduced once per step.
    """
    act = b * s * h * dtype_bytes
    ce = 3 * b * s * 4 if has_head else 0
    emb, head = int(has_embedding), int(has_head)
    if not sp:
        return {("all_reduce", "tp"): m * ((emb + 4 * L + head) * act + ce)}
    out = {("all_gather", "tp"): m * (4 * L + head + emb) * act,
           ("reduce_scatter", "tp"): m * (emb + 4 * L + head) * act,
           ("all_reduce", "tp"): m * ce + sp_grad_elems * dtype_bytes}
    return {k: v for k, v in out.items() if v}


def pp_send_bytes(num_virtual_stages: int, b: int, s_local: int, h: int, m: int, tp: int, dtype_bytes: int = 4) -> int:
    """Total p2p bytes of one step over all ranks: each boundary between consecutive virtual
    stages carries one activation forward and its gradient back, per micro-batch, per TP rank."""
    return m * (num_virtual_stages - 1) * 2 * b * s_local * h * dtype_bytes * tp
