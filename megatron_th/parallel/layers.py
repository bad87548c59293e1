"""Tensor-parallel layers (Megatron-style) and the vocab-parallel cross entropy.

Each holds only its TP shard of a logical weight and the attributes that say how it was cut
(``tp_dim``, ``tp_chunks``), so checkpoints can store the logical tensor and any layout can load it.
With sequence parallelism the activations entering a column-parallel layer are sequence shards
(all-gathered inside) and a row-parallel layer's output is reduce-scattered back to shards.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_th.parallel import comm


def mark(p: nn.Parameter, tp_dim: int | None, tp_chunks: int = 1, sequence_parallel: bool = False) -> nn.Parameter:
    """tp_dim: dimension split over TP (None: replicated). tp_chunks: the logical tensor is
    ``tp_chunks`` stacked blocks along tp_dim, each split over TP (SwiGLU [gate; up])."""
    p.tp_dim, p.tp_chunks, p.sequence_parallel = tp_dim, tp_chunks, sequence_parallel
    return p


def shard(full: torch.Tensor, tp_dim: int | None, tp_rank: int, tp_size: int, chunks: int = 1) -> torch.Tensor:
    """This rank's part of a logical tensor (the inverse of ``unshard``)."""
    if tp_dim is None or tp_size == 1:
        return full.clone()
    blocks = full.chunk(chunks, dim=tp_dim)
    return torch.cat([b.chunk(tp_size, dim=tp_dim)[tp_rank] for b in blocks], dim=tp_dim).clone()


def shard_offsets(full_shape, tp_dim, tp_rank, tp_size, chunks=1):
    """[(offset, shape)] of the logical-tensor regions a TP shard holds (one per chunk)."""
    if tp_dim is None or tp_size == 1:
        return [((0,) * len(full_shape), tuple(full_shape))]
    block = full_shape[tp_dim] // chunks
    part = block // tp_size
    out = []
    for c in range(chunks):
        off = [0] * len(full_shape)
        off[tp_dim] = c * block + tp_rank * part
        shp = list(full_shape)
        shp[tp_dim] = part
        out.append((tuple(off), tuple(shp)))
    return out


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local; W split along the output dim."""

    def __init__(self, weight, bias, group, sequence_parallel=False, chunks=1):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = mark(nn.Parameter(weight), 0, chunks)
        self.bias = mark(nn.Parameter(bias), 0, chunks) if bias is not None else None

    def forward(self, x):
        x = comm.gather_from_sp(x, self.group) if self.sequence_parallel else comm.copy_to_tp(x, self.group)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum over TP of x_local W_local^T, + b; W split along the input dim."""

    def __init__(self, weight, bias, group, sequence_parallel=False):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = mark(nn.Parameter(weight), 1)
        self.bias = mark(nn.Parameter(bias), None, sequence_parallel=sequence_parallel) if bias is not None else None

    def forward(self, x):
        y = F.linear(x, self.weight)
        y = comm.reduce_scatter_to_sp(y, self.group) if self.sequence_parallel else comm.reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the (padded) vocabulary; other ranks contribute the rest."""

    def __init__(self, weight, group, vocab_start, sequence_parallel=False):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = mark(nn.Parameter(weight), 0)
        self.start, self.end = vocab_start, vocab_start + weight.shape[0]

    def forward(self, tokens):
        outside = (tokens < self.start) | (tokens >= self.end)
        local = (tokens - self.start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return comm.reduce_scatter_to_sp(out, self.group) if self.sequence_parallel else comm.reduce_from_tp(out, self.group)


class _VocabParallelCE(torch.autograd.Function):
    """Cross entropy over logits split along the vocabulary; never gathers full logits."""

    @staticmethod
    def forward(ctx, logits, labels, group, vocab_start, true_vocab):
        logits = logits.float()
        v_local = logits.shape[-1]
        cols = torch.arange(vocab_start, vocab_start + v_local, device=logits.device)
        logits = logits.masked_fill(cols >= true_vocab, float("-inf"))  # padded vocab never wins
        lmax = logits.max(dim=-1).values
        comm.all_reduce(lmax, group, op=torch.distributed.ReduceOp.MAX)
        shifted = logits - lmax.unsqueeze(-1)
        inside = (labels >= vocab_start) & (labels < vocab_start + v_local)
        local = (labels - vocab_start).masked_fill(~inside, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~inside, 0.0)
        comm.all_reduce(picked, group)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        comm.all_reduce(sum_exp, group)
        loss = sum_exp.log() - picked
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, inside)
        return loss

    @staticmethod
    def backward(ctx, g):
        softmax, local, inside = ctx.saved_tensors
        grad = softmax.clone()
        onehot = torch.zeros_like(grad).scatter_(-1, local.unsqueeze(-1), 1.0) * inside.unsqueeze(-1)
        grad.sub_(onehot).mul_(g.unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits_local, labels, group, vocab_start, true_vocab):
    return _VocabParallelCE.apply(logits_local, labels, group, vocab_start, true_vocab)


class VocabParallelHead(nn.Module):
    """The LM head under TP: local logits, then vocab-parallel CE (or gathered logits)."""

    def __init__(self, group, vocab_start, true_vocab, sequence_parallel=False):
        super().__init__()
        self.group, self.vocab_start, self.true_vocab, self.sequence_parallel = group, vocab_start, true_vocab, sequence_parallel

    def forward(self, x, weight, labels=None):
        x = comm.gather_from_sp(x, self.group) if self.sequence_parallel else comm.copy_to_tp(x, self.group)
        logits = F.linear(x, weight)
        if labels is not None:
            return vocab_parallel_cross_entropy(logits, labels, self.group, self.vocab_start, self.true_vocab)
        return comm.all_gather(logits.contiguous(), self.group, dim=-1)[..., : self.true_vocab]
