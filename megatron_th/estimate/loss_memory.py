"""Memory of the LM loss on the last pipeline stage: what it saves for backward and its transient peak.

The head's loss (model/loss.py ``lm_cross_entropy``; under TP parallel/layers.py
``vocab_parallel_lm_loss``) takes one of two paths per micro-batch of N = b*s tokens on one TP
rank whose head holds R = V'/t vocabulary rows, of which Vr carry logits (Vr = V at TP 1, else
min(R, V) on the rank with the most):

- **unchunked** when N <= C, the chunk (``chunk_tokens_for``: C tokens of fp32 logits take about
  ``LOSS_CHUNK_BYTES`` = 256 MiB; C = chunk_tokens_for(V) at TP 1, chunk_tokens_for(R) under TP):
  the full logits, as before issue 15. TP 1: ``F.cross_entropy`` (model/loss.py ``_CrossEntropy``)
  keeps the fp32 log-probabilities ``4 N V`` (+ the targets, ``8 N``); forward peak adds the logits
  ``N V' D`` and (16-bit) their fp32 copy ``4 N V``, backward one fp32 ``[N, V]`` gradient (the
  log-softmax backward writes into the nll gradient): transient
  ``max(N V' D + [D < 4] 4 N V, 4 N V)``. TP: ``_VocabParallelCE`` keeps the fp32 softmax shard
  ``4 N R`` (+ the shard-local targets and two masks, ``10 N``), which its backward turns into the
  gradient in place; the peak is in forward: the logits ``N R D``, for 16-bit their fp32 copy
  ``4 N R``, the shifted logits ``4 N R`` besides the exponentials (the saved shard): transient
  ``(8 + D) N R`` for 16-bit, ``8 N R`` in fp32, ``12 N R`` in fp32 on a shard holding padded rows
  (their masked copy; the last rank when V' > V).
- **chunked** when N > C (``ChunkedLinearCrossEntropy``): keeps per token the shard-local label
  (int64), two bool masks and two fp32 statistics: ``18 N``; the forward peak is one chunk of logits
  ``C Vr (4 + D)`` (``C Vr 4`` in fp32: ``.float()`` is then the same tensor); backward recomputes
  the logits in tiles of tb tokens x vb vocabulary rows and holds the gradients it returns, x's
  ``N h D`` and the weight's ``R h D``, plus, for 16-bit x and weight, fp32 accumulators
  ``N h 4`` (x) and ``vb h 4`` (a vocabulary block of the weight):
  fp32: vb = Vr, tb = min(N, C), transient ``tb Vr 4 + N h 4 + R h 4``;
  16-bit: vb = min(Vr, C Vr // h), tb = min(N, C Vr // vb),
  transient ``tb vb (4 + D) + N h (D + 4) + R h D + vb h 4``.
  The chunked transient counts the returned gradients because the recomputation makes them
  coexist with the tiles; the unchunked one does not (its logit gradients are larger and come
  first). Vectors of N elements the loop creates and frees (about 40 N bytes) are not counted.

Check (tests/test_estimate.py): saved + transient equals the live-bytes peak of the loss's forward
and backward counted by allocation (the TorchDispatchMode of benchmarks/loss_memory.py) within 1%,
both paths, bf16 and fp32, TP 1 and 2.
"""
from __future__ import annotations


def loss_plan(tokens: int, vocab: int, padded_vocab: int, tp: int = 1) -> dict:
    """How the loss runs for ``tokens`` (b*s) on one TP rank: ``rows`` R (head rows on the rank),
    ``valid`` Vr (rows with logits, largest shard), ``chunk`` C (tokens per chunk), ``chunked``."""
    from megatron_th.model import loss as lm_loss

    rows = padded_vocab // tp
    valid = vocab if tp == 1 else min(rows, vocab)
    chunk = lm_loss.chunk_tokens_for(vocab if tp == 1 else rows)  # as lm_cross_entropy / vocab_parallel_lm_loss
    return {"rows": rows, "valid": valid, "chunk": chunk, "chunked": tokens > chunk}


def saved_terms(tokens: int, vocab: int, padded_vocab: int, tp: int = 1) -> dict:
    """Bytes the loss keeps for backward (the head input and the loss mask are counted by the caller)."""
    plan = loss_plan(tokens, vocab, padded_vocab, tp)
    if plan["chunked"]:
        return {"loss: per-token label, masks, max and sum of exponentials (chunked)": 18 * tokens}
    if tp > 1:
        return {"logits: fp32 softmax shard": tokens * plan["rows"] * 4, "targets": tokens * (8 + 1 + 1)}
    return {"logits: fp32 log-probabilities": tokens * vocab * 4, "targets": tokens * 8}


def transient_bytes(tokens: int, hidden: int, vocab: int, padded_vocab: int, tp: int, act_bytes: int) -> int:
    """Bytes the loss allocates and frees within its forward or backward, at their peak (module
    docstring): one micro-batch of ``tokens`` on one TP rank, activations of ``act_bytes``."""
    plan = loss_plan(tokens, vocab, padded_vocab, tp)
    n, h, d, r, v, c = tokens, hidden, act_bytes, plan["rows"], plan["valid"], plan["chunk"]
    if not plan["chunked"]:
        if tp > 1:  # forward: logits, their fp32 copy (16-bit), shifted, exp; fp32 on a padded shard: + masked copy
            return (8 + d if d < 4 else 12 if padded_vocab > vocab else 8) * n * r
        return max(n * padded_vocab * d + (4 * n * vocab if d < 4 else 0), 4 * n * vocab)
    if d >= 4:
        tb = min(n, c)
        return max(c * v * 4, tb * v * 4 + n * h * 4 + r * h * 4)
    vb = min(v, max(1, c * v // h))
    tb = min(n, max(1, c * v // vb))
    return max(c * v * (4 + d), tb * vb * (4 + d) + n * h * (d + 4) + r * h * d + vb * h * 4)
