"""After backward, before the optimizer: make gradients complete, and count each parameter once.

- Sequence parallelism: replicated weights applied to sequence shards (norms, row-parallel
  biases) hold partial gradients on each TP rank; they are summed over TP (one flat all-reduce).
- The global gradient norm sums squares over the ranks holding different parts of the model
  (TP x PP); a replicated parameter counts only on TP rank 0, and a tied-embedding copy on the
  last stage counts only on the first.
"""
from __future__ import annotations

import torch

from megatron_th.parallel import comm


def _flat_all_reduce(tensors: list[torch.Tensor], group) -> None:
    if not tensors or comm.size(group) == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    comm.all_reduce(flat, group)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


TIED = "embedding.word_embeddings.weight"


def _grad(p):
    return p.main_grad if getattr(p, "main_grad", None) is not None else p.grad


@torch.no_grad()
def finalize_grads(named_params, groups, tied_embeddings: bool = True) -> None:
    """Cross-group sums, before the data-parallel reduction (the gradient buffers defer the
    buckets holding these parameters until this has run)."""
    sp = [_grad(p) for _, p in named_params if getattr(p, "sequence_parallel", False) and _grad(p) is not None]
    _flat_all_reduce(sp, groups.tp_group)
    if tied_embeddings and groups.pp > 1 and (groups.is_first_stage or groups.is_last_stage):
        # tied embeddings: the first stage's table and the last stage's copy get the summed gradient
        tied = [p for n, p in named_params if n == TIED]
        if tied:
            if _grad(tied[0]) is None:
                tied[0].grad = torch.zeros_like(tied[0])
            _flat_all_reduce([_grad(tied[0])], groups.embd_group)


def norm_weights(named_params, groups) -> list[float]:
    """1.0 where this rank's copy of a parameter enters the global norm, else 0.0."""
    out = []
    for name, p in named_params:
        replicated = getattr(p, "tp_dim", None) is None
        w = 0.0 if (replicated and groups.tp_rank != 0) else 1.0
        if name == TIED and groups.pp > 1 and not groups.is_first_stage:
            w = 0.0  # the last stage's tied copy: the first stage counts it
        out.append(w)
    return out


def sq_norm_reducer(groups, zero1: bool = False):
    """Sum of squares over the ranks holding distinct parts: the model-parallel group, and under
    Zero-1 (each DP rank holds part of every gradient) the whole world."""
    group = groups.world_group if zero1 else groups.mp_group

    def reduce(sq: torch.Tensor) -> torch.Tensor:
        sq = sq.clone()
        comm.all_reduce(sq, group)
        return sq
    return reduce
