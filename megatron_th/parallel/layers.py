"""Tensor-parallel layers (Megatron-style) and the vocab-parallel cross entropy (chunked over tokens
for large vocabularies: model/loss.py).

Each holds only its TP shard of a logical weight and the attributes that say how it was cut
(``tp_dim``, ``tp_chunks``), so checkpoints can store the logical tensor and any layout can load it.
With sequence parallelism the activations entering a column-parallel layer are sequence shards
(all-gathered inside) and a row-parallel layer's output is reduce-scattered back to shards.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from megatron_th.model import loss as loss_mod
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


class _ColumnParallelMatmul(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for a column-parallel weight whose input enters the TP region
    here, with the input gradient's communication overlapped with the weight gradient's matmul.

    forward(x [b, s (/tp under SP), h], weight [out_local, h], bias [out_local] or None, group, sp)
    -> [b, s, out_local]. Forward: under SP the sequence shards are all-gathered first (dim 1).
    Backward: dx = g W is computed first and its all-reduce over TP (SP: its reduce-scatter back
    to sequence shards) started without waiting; dW = g^T x and db are computed meanwhile, then the
    collective is waited. That is Megatron-LM's LinearWithGradAccumulationAndAsyncCommunication
    (core/tensor_parallel/layers.py: the async dgrad all-reduce, or reduce-scatter under SP, during
    the wgrad GEMM). Values, collectives and bytes are those of ``copy_to_tp`` / ``gather_from_sp``
    followed by F.linear, bit for bit (tests/test_tp_overlap.py); what changes is that the wait for
    the TP peers overlaps dW's matmul. Unlike Megatron under SP, the gathered input is kept from
    forward (as F.linear after gather_from_sp kept it), not gathered again in backward.

    The same code on GPU with NCCL behaves differently from gloo, and stays correct: gloo runs the
    collective on its own threads while this thread computes dW on the CPU; NCCL enqueues it on
    its internal stream behind an event on the current stream (so it reads the finished dx), dW's
    GEMM goes on the compute stream, and ``wait()`` makes the compute stream (not the host) wait
    for the collective before anything reads dx; ProcessGroupNCCL keeps dx (and, under SP, the
    reduce-scatter's input, which Pending also holds) from the caching allocator until the
    collective ends. Whether the two actually run at once is the GPU's choice: with several
    hardware queues the GEMM can be dispatched first and fill every SM, and the collective then
    runs after it (correct, not overlapped). Megatron-LM therefore sets CUDA_DEVICE_MAX_CONNECTIONS=1
    (one queue: kernels start in issue order, the collective before the GEMM); set it here for the
    same reason. COUNTER's seconds for the wait are host seconds, near zero on a GPU.
    Under ``--compile`` a traced layer takes the blocking region functions instead
    (``column_parallel_linear``): the compiled graph has no overlap, only the same values and bytes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, group, sequence_parallel):
        full = comm.all_gather(x, group, dim=1) if sequence_parallel else x
        ctx.save_for_backward(full, weight)
        ctx.group, ctx.sequence_parallel, ctx.has_bias = group, sequence_parallel, bias is not None
        return F.linear(full, weight, bias)

    @staticmethod
    def backward(ctx, g):
        full, weight = ctx.saved_tensors
        pending = None
        if ctx.needs_input_grad[0]:
            dx = g.matmul(weight)
            pending = (comm.reduce_scatter_start(dx, ctx.group, 1) if ctx.sequence_parallel
                       else comm.all_reduce_start(dx, ctx.group))
        g2 = g.reshape(-1, g.shape[-1])
        dw = g2.t().matmul(full.reshape(-1, full.shape[-1])) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (pending.wait() if pending is not None else None), dw, db, None, None


def column_parallel_linear(x, weight, bias, group, sequence_parallel: bool = False):
    """``x`` (a sequence shard under SP) into the TP region, then ``F.linear(x, weight, bias)``:
    _ColumnParallelMatmul (dx's collective overlapped with dW) with more than one TP rank. While
    dynamo traces (``--compile``) the region functions of comm.py and F.linear instead (dynamo
    takes their collectives as custom ops; same values and bytes)."""
    if comm.size(group) == 1:
        return F.linear(x, weight, bias)
    if comm._tracing():
        x = comm.gather_from_sp(x, group) if sequence_parallel else comm.copy_to_tp(x, group)
        return F.linear(x, weight, bias)
    return _ColumnParallelMatmul.apply(x, weight, bias, group, sequence_parallel)


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local; W split along the output dim (column_parallel_linear)."""

    def __init__(self, weight, bias, group, sequence_parallel=False, chunks=1):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.weight = mark(nn.Parameter(weight), 0, chunks)
        self.bias = mark(nn.Parameter(bias), 0, chunks) if bias is not None else None

    def forward(self, x):
        return column_parallel_linear(x, self.weight, self.bias, self.group, self.sequence_parallel)


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
    """Cross entropy over logits split along the vocabulary; never gathers full logits.

    forward(logits [..., V_local] any float dtype, labels [...] int64, group, vocab_start, true_vocab)
    -> loss [...] fp32. The formula of Megatron-LM core/tensor_parallel/cross_entropy.py
    (_VocabParallelCrossEntropy): all-reduce (MAX) of the per-token max logit, then all-reduce
    (SUM) of the logit at the label (held by one shard) and of sum(exp(logit - max)); loss =
    log(sum_exp) - (label logit - max); gradient softmax - onehot on each shard, no communication.
    A label equal to model.loss.IGNORE_INDEX (-100) gives loss 0 and no gradient, as on one device.
    Used when all tokens fit in one loss chunk (``vocab_parallel_lm_loss``); it keeps the full
    local fp32 softmax [..., V_local] until backward, which turns it into the gradient in place (as
    Megatron's does: no copy of a logits-sized tensor), so a second backward through the same graph
    (retain_graph) raises RuntimeError. Padded columns are masked only on a shard that has some.
    """

    @staticmethod
    def forward(ctx, logits, labels, group, vocab_start, true_vocab):
        logits = logits.float()
        v_local = logits.shape[-1]
        if vocab_start + v_local > true_vocab:  # this shard holds padded rows: they never win
            cols = torch.arange(vocab_start, vocab_start + v_local, device=logits.device)
            logits = logits.masked_fill(cols >= true_vocab, float("-inf"))
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
        ignored = labels == loss_mod.IGNORE_INDEX  # as F.cross_entropy: loss 0, no gradient
        loss = (sum_exp.log() - picked).masked_fill(ignored, 0.0)
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, inside, ignored)
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, g):
        if ctx.used:
            raise RuntimeError("vocab-parallel cross entropy: its backward reuses the saved softmax in place "
                               "and runs once (no retain_graph)")
        ctx.used = True
        softmax, local, inside, ignored = ctx.saved_tensors
        grad = softmax  # softmax - onehot(label) on the shard holding the label, in place
        grad.scatter_add_(-1, local.unsqueeze(-1), inside.unsqueeze(-1).to(grad.dtype).neg())
        grad.mul_(g.masked_fill(ignored, 0.0).unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits_local, labels, group, vocab_start, true_vocab):
    """Per-token loss (fp32, labels' shape) from this rank's logits [..., V_local]; see _VocabParallelCE."""
    return _VocabParallelCE.apply(logits_local, labels, group, vocab_start, true_vocab)


def _combine_shards(group, lmax, sum_exp, picked):
    """Merge the shards' per-token statistics (fp32 [N] each) for ChunkedLinearCrossEntropy: three
    all-reduces of N fp32 over the TP group, the same three (and the same bytes) as _VocabParallelCE.
    Each shard's sum of exponentials is relative to its own max, so it is rescaled to the global max
    before the sum: sum_r S_r * exp(m_r - max_r m_r) (the log-sum-exp merge); the label's raw logit
    is summed (one shard holds it) and shifted by the global max by the caller."""
    gmax = lmax.clone()
    comm.all_reduce(gmax, group, op=torch.distributed.ReduceOp.MAX)
    comm.all_reduce(picked, group)
    sum_exp = sum_exp * (lmax - gmax).exp_()
    comm.all_reduce(sum_exp, group)
    return gmax, sum_exp, picked


def vocab_parallel_lm_loss(x, weight, labels, group, vocab_start, true_vocab, chunk_tokens=None):
    """Per-token LM loss under TP from the full-sequence hidden states, never holding full logits.

    x: [b, s, h] in the compute dtype, already in the TP region (copy_to_tp / gather_from_sp: its
    gradient is a partial sum those reduce); weight: this rank's vocabulary rows [V_padded/tp, h]
    starting at id ``vocab_start``; labels [b, s] int64; ids >= ``true_vocab`` are padding.
    Returns fp32 [b, s].

    ``chunk_tokens`` (default model.loss.chunk_tokens_for(V_local): about LOSS_CHUNK_BYTES of fp32
    logits per chunk): when all b*s tokens fit in one chunk, the logits [b, s, V_local] and
    _VocabParallelCE exactly as before chunking; otherwise ChunkedLinearCrossEntropy on this shard
    (peak about one chunk of local logits in fp32 plus the compute dtype; logits recomputed in
    backward), its per-token statistics merged by ``_combine_shards``. Communication either way:
    3 all-reduces of b*s fp32 per call in forward (12*b*s bytes), none in backward, the same
    calls and bytes as before chunking (parallel/volume.py tp_step_bytes).
    """
    n_tok = labels.numel()
    chunk = chunk_tokens if chunk_tokens is not None else loss_mod.chunk_tokens_for(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    if n_tok <= chunk:
        return vocab_parallel_cross_entropy(F.linear(x, weight), labels, group, vocab_start, true_vocab)
    loss = loss_mod.ChunkedLinearCrossEntropy.apply(x.reshape(n_tok, x.shape[-1]), weight, labels.reshape(n_tok),
                                                    vocab_start, true_vocab, chunk,
                                                    functools.partial(_combine_shards, group))
    return loss.view(labels.shape)


class VocabParallelHead(nn.Module):
    """The LM head under TP: the chunked vocab-parallel loss (labels given) or gathered logits.

    forward(x [b, s or s/tp with SP, h], weight [V_padded/tp, h], labels [b, s] or None): with SP
    the sequence shards are all-gathered first (their gradient reduce-scattered back), else x enters
    the TP region (its gradient all-reduced). Returns the fp32 per-token loss [b, s]
    (``vocab_parallel_lm_loss``) or the logits [b, s, true_vocab] gathered over the vocabulary.
    When all tokens fit in one loss chunk the logits come from column_parallel_linear (x's gradient
    communicated during the weight-gradient matmul) and go to vocab_parallel_cross_entropy, which
    is what vocab_parallel_lm_loss computes for them.
    """

    def __init__(self, group, vocab_start, true_vocab, sequence_parallel=False):
        super().__init__()
        self.group, self.vocab_start, self.true_vocab, self.sequence_parallel = group, vocab_start, true_vocab, sequence_parallel

    def forward(self, x, weight, labels=None):
        if labels is not None and labels.numel() <= loss_mod.chunk_tokens_for(weight.shape[0]):
            # one loss chunk: the logits through column_parallel_linear, whose backward overlaps
            # the all-reduce (SP: reduce-scatter) of dx with the head's weight-gradient matmul
            logits = column_parallel_linear(x, weight, None, self.group, self.sequence_parallel)
            return vocab_parallel_cross_entropy(logits, labels, self.group, self.vocab_start, self.true_vocab)
        x = comm.gather_from_sp(x, self.group) if self.sequence_parallel else comm.copy_to_tp(x, self.group)
        if labels is not None:
            return vocab_parallel_lm_loss(x, weight, labels, self.group, self.vocab_start, self.true_vocab)
        logits = F.linear(x, weight)
        return comm.all_gather(logits.contiguous(), self.group, dim=-1)[..., : self.true_vocab]
