"""Document-masked ``varlen`` attention as one opaque custom op, for compiled layers.

The ``varlen`` backend (attention.py) runs one SDPA call per group of equally padded documents;
the number of groups and their shapes follow the micro-batch's document layout. Traced by
torch.compile, each layout is a different graph: dynamo guards on the group shapes and recompiles
nearly every micro-batch (measured: 8 compiles in 8 micro-batches of packed 1024-token rows, then
its recompile limit and eager execution). ``varlen_attention`` hides the layout from the graph:
its inputs are q, k, v and the CPU ``cu_seqlens`` (a tensor, so its values are never guarded on;
its length is marked dynamic), its output has q's shape, and its implementation is the eager
``attention(..., backend="varlen")``. The graph is the same for every layout: one compile.

Backward is a second opaque op that recomputes the forward and differentiates it (torch.func.vjp)
(one extra attention forward per layer, the price of keeping the layout out of the graph; the
host-side layout itself is cached per ``cu_seqlens`` in documents._varlen_plan). No dropout
here: the recomputation would draw other masks (training/compile.py uses this op only when the
attention dropout is 0 or the model evaluates).
"""
from __future__ import annotations

import collections
from typing import Optional

import torch

from megatron_th.model.attention import attention
from megatron_th.model.documents import DocumentPlan

_PLANS: collections.OrderedDict = collections.OrderedDict()  # (bounds, b, s, device) -> DocumentPlan


def _plan(cu_seqlens: torch.Tensor, q: torch.Tensor) -> DocumentPlan:
    """The DocumentPlan of this micro-batch on q's device; the last 4 are kept, so every layer of
    a micro-batch (and its backward) finds the device index tensors built once."""
    b, s = q.shape[0], q.shape[2]
    key = (tuple(cu_seqlens.tolist()), b, s, q.device)  # a CPU tensor: no device sync
    plan = _PLANS.pop(key, None) or DocumentPlan(key[0], b, s, device=q.device)
    _PLANS[key] = plan
    while len(_PLANS) > 4:
        _PLANS.popitem(last=False)
    return plan


def _like(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides ``torch.empty_like(ref)`` has (what the fake implementations
    promise the compiler), copied only when they differ."""
    if torch.empty_like(ref, device="meta").stride() == t.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _run(q, k, v, cu_seqlens, scale, window):
    return attention(q, k, v, documents=_plan(cu_seqlens, q), backend="varlen", scale=scale,
                     window=window if window > 0 else None)


@torch.library.custom_op("megatron_th::varlen_attention", mutates_args=())
def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: Optional[float], window: int) -> torch.Tensor:
    """Causal attention within the documents of ``cu_seqlens`` (CPU int32 THD boundaries of the
    ``[b, s]`` batch), ``attention(..., backend="varlen")`` exactly. q [b, nq, s, hd], k/v
    [b, nkv, s, hd]; ``scale`` None: 1/sqrt(hd); ``window`` <= 0: none, else the sliding window in
    tokens. Returns [b, nq, s, hd] with the strides of ``empty_like(q)``. Raises ValueError for
    invalid boundaries (DocumentPlan)."""
    return _like(q, _run(q, k, v, cu_seqlens, scale, window))


@varlen_attention.register_fake
def _(q, k, v, cu_seqlens, scale, window):
    return torch.empty_like(q)


@torch.library.custom_op("megatron_th::varlen_attention_backward", mutates_args=())
def varlen_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              cu_seqlens: torch.Tensor, scale: Optional[float],
                              window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``varlen_attention`` for the output gradient ``grad``: the forward
    recomputed and differentiated."""
    # torch.func.vjp, not autograd.grad: a custom op's implementation runs below the autograd
    # dispatch key, where tensor.requires_grad_() records nothing; functorch's transform does
    _, vjp = torch.func.vjp(lambda q_, k_, v_: _run(q_, k_, v_, cu_seqlens, scale, window), q, k, v)
    grads = vjp(grad)
    return tuple(_like(x, g) for x, g in zip((q, k, v), grads))


@varlen_attention_backward.register_fake
def _(grad, q, k, v, cu_seqlens, scale, window):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, scale, window = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens)
    ctx.scale, ctx.window = scale, window


def _backward(ctx, grad):
    q, k, v, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_attention_backward(grad, q, k, v, cu_seqlens, ctx.scale, ctx.window)
    return dq, dk, dv, None, None, None


varlen_attention.register_autograd(_backward, setup_context=_setup_context)
