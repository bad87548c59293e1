"""The LM loss without full logits: cross entropy over the head's output, chunked over tokens.

The unchunked loss computes ``logits = x W^T`` for every token at once and upcasts them to fp32: with
N = b*s tokens and a 128k-262k vocabulary that is N*V*4 bytes (2.3 GiB at N=4096, V=152064) held
two to four times over (compute-dtype logits, fp32 logits, log-softmax saved for backward, its
gradient). Here the tokens are cut into chunks of ``chunk_tokens`` rows; each chunk's logits live
only inside the loop and are recomputed in backward, so between forward and backward only x, the
labels and two fp32 numbers per token are kept, and the peak is about one chunk of fp32 logits
plus the same chunk in the compute dtype (``chunk_tokens * V * (4 + dtype bytes)``), whatever N.
Backward adds, for 16-bit weights, fp32 accumulators of at most one chunk's size for the weight
gradient and N*h*4 bytes for x's. The cost is one extra logits matmul (the recompute): 2*N*h*V
FLOPs, +1/3 of the head's.

``lm_cross_entropy`` is the entry point (single device). ``ChunkedLinearCrossEntropy`` is the
autograd Function it uses; the vocab-parallel head (parallel/layers.py) runs the same Function on
its vocabulary shard with a ``combine`` hook that all-reduces the per-token statistics, so this file
knows nothing of process groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LOSS_CHUNK_BYTES = 256 * 2 ** 20
"""fp32 logits per chunk, in bytes (per rank: under TP the vocabulary is this rank's shard)."""

IGNORE_INDEX = -100
"""A label equal to this gives loss 0 and no gradient (F.cross_entropy's default ignore_index)."""


def chunk_tokens_for(vocab: int, chunk_bytes: int | None = None) -> int:
    """Tokens per chunk so that a chunk's fp32 logits ``[tokens, vocab]`` take about
    ``chunk_bytes`` (default ``LOSS_CHUNK_BYTES``, read at call time); a multiple of 64 when at
    least 64 (matmul-friendly rows): 384 tokens at V=152064, 192 at V=262208, 2048 at V=32000."""
    chunk_bytes = LOSS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    n = max(1, chunk_bytes // (4 * max(1, vocab)))
    return n - n % 64 if n >= 64 else n


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy of ``x @ weight[:n]^T`` against ``labels``, ``chunk`` tokens at a time.

    forward(x [N, h], weight [V_local, h], labels [N] int64, vocab_start: int, true_vocab: int,
    chunk: int, combine) -> loss [N] fp32.

    ``weight`` rows are vocabulary ids ``vocab_start ... vocab_start + V_local - 1``; only ids
    ``< true_vocab`` take part (padded rows get no probability and a zero gradient). x and weight
    share the compute dtype (fp32, bf16, fp16); each chunk's logits are computed in it and upcast
    to fp32 for the softmax, as ``F.linear(...).float()`` does. A label outside this shard counts
    0 here (another shard holds it); a label equal to IGNORE_INDEX gives loss 0 and no gradient;
    labels outside [0, true_vocab) otherwise are not checked (that would be a host sync).

    ``combine(lmax, sum_exp, picked) -> (gmax, sum_exp, picked)``: None on a single device; under
    vocab parallelism it merges the shards' per-token statistics (all fp32 [N]): local max logit,
    sum of exp(logit - local max), logit at the label (0 if not in this shard). The loss is then
    ``log(sum_exp) - (picked - gmax)`` (the log-sum-exp form of F.cross_entropy and of Megatron-LM
    core/tensor_parallel/cross_entropy.py). Backward recomputes the logits tile by tile (token rows
    x vocabulary rows, each about one forward chunk of fp32 logits) and gives
    ``g * (softmax - onehot)`` (in the compute dtype, as autograd would) to the matmuls: dx [N, h]
    and dweight [V_local, h]. fp32: one tile spans the shard's vocabulary, so dx is one matmul
    per chunk and dweight sums the chunks in place. 16-bit x/weight: the partial products are
    summed in fp32 (dweight per vocabulary block of at most chunk*V_local/h rows, dx over [N, h])
    and rounded once, so the gradients carry one 16-bit rounding like a single matmul, not one
    per chunk. No communication in backward: x's gradient is a partial sum the caller's TP region
    reduces. Shapes and ``chunk`` are Python ints: no control flow on tensor values, no host
    sync (torch.compile traces it whole: checked with fullgraph=True).
    """

    @staticmethod
    def forward(ctx, x, weight, labels, vocab_start, true_vocab, chunk, combine=None):
        n_tok, v_local = x.shape[0], weight.shape[0]
        n_valid = min(v_local, max(0, true_vocab - vocab_start))
        w = weight[:n_valid]
        local = labels - vocab_start
        inside = (local >= 0) & (local < n_valid)
        local = local.masked_fill(~inside, 0)
        lmax = torch.full((n_tok,), torch.finfo(torch.float32).min, dtype=torch.float32, device=x.device)
        sum_exp = torch.zeros(n_tok, dtype=torch.float32, device=x.device)
        picked = torch.zeros(n_tok, dtype=torch.float32, device=x.device)
        if n_valid:
            for a in range(0, n_tok, chunk):
                b = min(a + chunk, n_tok)
                logits = F.linear(x[a:b], w).float()
                picked[a:b] = logits.gather(-1, local[a:b].unsqueeze(-1)).squeeze(-1).masked_fill(~inside[a:b], 0.0)
                m = logits.amax(dim=-1)
                lmax[a:b] = m
                sum_exp[a:b] = logits.sub_(m.unsqueeze(-1)).exp_().sum(dim=-1)
                del logits
        if combine is not None:
            gmax, sum_exp, picked = combine(lmax, sum_exp, picked)
        else:
            gmax = lmax
        loss = sum_exp.log() - (picked - gmax)
        ignored = labels == IGNORE_INDEX
        loss = loss.masked_fill(ignored, 0.0)
        ctx.save_for_backward(x, weight, local, inside & ~ignored, ignored, gmax, sum_exp)
        ctx.n_valid, ctx.chunk = n_valid, chunk
        return loss

    @staticmethod
    def backward(ctx, g):
        x, weight, local, hit, ignored, gmax, sum_exp = ctx.saved_tensors
        n_valid, chunk = ctx.n_valid, ctx.chunk
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n_tok, h = x.shape
        grad_x = torch.zeros((n_tok, h), dtype=x.dtype, device=x.device) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_w else None
        if not n_valid or not (need_x or need_w):
            return grad_x, grad_w, None, None, None, None, None
        # tiles of (token rows) x (vocab rows), each about one forward chunk of fp32 logits. fp32:
        # all vocab rows at once, the weight gradient summing the token chunks in place. 16-bit: a
        # vocab block's weight gradient sums every token tile in an fp32 buffer of at most one chunk
        # (rounded once at the end, as a single matmul would), x's gradient the blocks likewise
        wide = weight.element_size() >= 4
        vb = n_valid if wide else min(n_valid, max(1, chunk * n_valid // h))
        tb = min(n_tok, max(1, chunk * n_valid // vb))
        acc_x = grad_x if grad_x is None or x.element_size() >= 4 else torch.zeros((n_tok, h), dtype=torch.float32, device=x.device)
        g = g.float().masked_fill(ignored, 0.0)
        for v0 in range(0, n_valid, vb):
            v1 = min(v0 + vb, n_valid)
            w = weight[v0:v1]
            if need_w:
                acc_w = grad_w[v0:v1] if wide else torch.zeros((v1 - v0, h), dtype=torch.float32, device=x.device)
            # -1 at the label when it is a column of this block: scatter of 0 elsewhere (no host sync)
            col = local - v0
            on = hit & (col >= 0) & (col < v1 - v0)
            col = col.masked_fill(~on, 0)
            minus_one = -on.float()
            for a in range(0, n_tok, tb):
                b = min(a + tb, n_tok)
                p = F.linear(x[a:b], w).float()
                p.sub_(gmax[a:b].unsqueeze(-1)).exp_().div_(sum_exp[a:b].unsqueeze(-1))  # softmax
                p.scatter_add_(-1, col[a:b].unsqueeze(-1), minus_one[a:b].unsqueeze(-1))  # - onehot
                p.mul_(g[a:b].unsqueeze(-1))
                d = p.to(x.dtype)
                del p
                if need_x:
                    _accumulate(acc_x[a:b], d, w)
                if need_w:
                    _accumulate(acc_w, d.t(), x[a:b])
                del d
            if need_w and acc_w.dtype != grad_w.dtype:
                grad_w[v0:v1].copy_(acc_w)
        if need_x and acc_x is not grad_x:
            grad_x.copy_(acc_x)
        return grad_x, grad_w, None, None, None, None, None


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b in place; a, b in the compute dtype, acc in it (fp32) or in fp32 (16-bit
    inputs: the product is rounded once per tile, the running sum stays fp32)."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(torch.mm(a, b))


class _CrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits, labels, reduction="none")`` (ignore_index IGNORE_INDEX) bit for bit,
    with one ``[N, V]`` buffer fewer in backward.

    forward(logits [N, V] fp32, labels [N] int64) -> loss [N] fp32. F.cross_entropy is
    ``nll_loss(log_softmax(logits))``: its backward fills a zero ``[N, V]`` gradient of the
    log-probabilities (one entry per row), then ``_log_softmax_backward_data`` allocates another
    ``[N, V]`` for the result. Here the same two kernels run and the second writes into the first
    (the kernel is elementwise along the row after reading the row's sum), so values are those of
    F.cross_entropy, bitwise (tests/test_chunked_loss.py), and the saved log-probabilities stay
    intact (a second backward with retain_graph is still correct). Labels out of [0, V) other
    than IGNORE_INDEX raise RuntimeError (gather's bounds check; F.cross_entropy's is nll_loss's).
    """

    @staticmethod
    def forward(ctx, logits, labels):
        logp = torch.log_softmax(logits, dim=-1)
        ignored = labels == IGNORE_INDEX
        index = labels.masked_fill(ignored, 0).unsqueeze(-1)
        loss = logp.gather(-1, index).squeeze(-1).neg_().masked_fill_(ignored, 0.0)  # nll_loss, "none"
        ctx.save_for_backward(logp, labels)  # what nll_loss saves: the estimator counts these bytes
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        logp, labels = ctx.saved_tensors
        ignored = labels == IGNORE_INDEX
        grad = torch.zeros_like(logp)  # nll_loss_backward: -g at the label, 0 on ignored rows
        index = labels.masked_fill(ignored, 0).unsqueeze(-1)
        grad.scatter_(-1, index, g.masked_fill(ignored, 0.0).neg().unsqueeze(-1))
        return torch._log_softmax_backward_data(grad, logp, -1, logp.dtype, out=grad), None


def unchunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, true_vocab: int) -> torch.Tensor:
    """The loss as computed before chunking (full logits [b, s, V_padded] in the compute dtype,
    upcast to fp32 [b*s, V]): ``F.cross_entropy`` with ``reduction="none"`` (bitwise; computed by
    ``_CrossEntropy``, whose backward needs one fp32 [b*s, V] buffer, not two). Returns fp32 [b, s]."""
    logits = F.linear(x, weight)[..., :true_vocab]
    return _CrossEntropy.apply(logits.float().flatten(0, 1), labels.flatten()).view(labels.shape)


def lm_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, true_vocab: int,
                     chunk_tokens: int | None = None) -> torch.Tensor:
    """Per-token LM loss of the head ``weight`` over hidden states ``x``, without full logits.

    x: [b, s, h] (or any [..., h]) in the compute dtype; weight: [V_padded, h] (tied embedding or
    output layer), rows >= ``true_vocab`` are padding and get no probability and zero gradient;
    labels: int64 of x's leading shape. Returns the fp32 loss of labels' shape (nats; multiply by
    the loss mask and average outside). Gradients flow to x and weight.

    ``chunk_tokens``: tokens per chunk (default ``chunk_tokens_for(true_vocab)``: about
    LOSS_CHUNK_BYTES of fp32 logits). When all tokens fit in one chunk this is exactly the
    unchunked computation (``unchunked_cross_entropy``, bitwise), so small vocabularies keep
    today's numbers; otherwise ``ChunkedLinearCrossEntropy`` (equal within fp32 rounding, about
    1e-7 relative).
    """
    n_tok = labels.numel()
    chunk = chunk_tokens if chunk_tokens is not None else chunk_tokens_for(true_vocab)
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    if n_tok <= chunk:
        return unchunked_cross_entropy(x, weight, labels, true_vocab)
    loss = ChunkedLinearCrossEntropy.apply(x.reshape(n_tok, x.shape[-1]), weight, labels.reshape(n_tok),
                                           0, true_vocab, chunk, None)
    return loss.view(labels.shape)
