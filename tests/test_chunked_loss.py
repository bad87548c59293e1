"""The chunked LM loss (model/loss.py, parallel/layers.py) equals the unchunked one and never holds
full fp32 logits: serial and vocab-parallel (TP=2, with and without SP), padded vocabularies,
token counts not divisible by the chunk, ignored labels, bf16."""
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from tests import dist as D


def _rel(a, b) -> float:
    """max |a - b| / max |b| (fp32 reductions)."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _case(dtype=torch.float32, b=3, s=37, h=16, padded=67, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, h, generator=gen).to(dtype)
    w = torch.randn(padded, h, generator=gen).to(dtype)
    g = torch.rand(b, s, generator=gen)  # a loss-mask-like weighting of the per-token losses
    return x, w, g


def _loss_and_grads(fn, x, w, labels, g, *args, **kw):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = fn(x, w, labels, *args, **kw)
    (loss * g).sum().backward()
    return loss.detach(), x.grad, w.grad


def test_serial_chunked_equals_unchunked():
    from megatron_th.model.loss import lm_cross_entropy, unchunked_cross_entropy

    true_vocab = 61  # 6 padded rows
    x, w, g = _case()
    labels = torch.randint(0, true_vocab, (3, 37), generator=torch.Generator().manual_seed(1))
    labels[1, 5] = -100  # F.cross_entropy's ignore_index: loss 0, no gradient
    ref = _loss_and_grads(unchunked_cross_entropy, x, w, labels, g, true_vocab)
    for chunk in (1, 10, 64, 110):  # 111 tokens: every chunk count leaves a remainder
        out = _loss_and_grads(lm_cross_entropy, x, w, labels, g, true_vocab, chunk_tokens=chunk)
        for name, a, b in zip(("loss", "grad x", "grad weight"), out, ref):
            assert _rel(a, b) <= 1e-6, (chunk, name, _rel(a, b))
        assert out[0][1, 5] == 0 and torch.count_nonzero(out[2][true_vocab:]) == 0
    # everything in one chunk: exactly today's computation
    one = _loss_and_grads(lm_cross_entropy, x, w, labels, g, true_vocab, chunk_tokens=111)
    assert all(torch.equal(a, b) for a, b in zip(one, ref))
    # bf16: logits in bf16, softmax in fp32; gradients within one bf16 rounding of the single matmul
    xb, wb = x.bfloat16(), w.bfloat16()
    ref = _loss_and_grads(unchunked_cross_entropy, xb, wb, labels, g, true_vocab)
    out = _loss_and_grads(lm_cross_entropy, xb, wb, labels, g, true_vocab, chunk_tokens=10)
    assert out[0].dtype == torch.float32 and out[1].dtype == out[2].dtype == torch.bfloat16
    assert _rel(out[0], ref[0]) <= 1e-6
    assert _rel(out[1], ref[1]) <= 2 ** -7 and _rel(out[2], ref[2]) <= 2 ** -7


def test_loss_memory_stays_a_chunk(monkeypatch):
    """LMHead (gpt.py) and VocabParallelHead (one process) with 2 MiB chunks: no allocation near the
    full fp32 logits (the old head allocated exactly b*s*V*4 bytes at once), and the live peak of
    forward + backward (x and weight gradients included) well below them."""
    from megatron_th.utils.alloc_trace import record_live_bytes
    from megatron_th.model import loss as loss_mod
    from megatron_th.model.gpt import LMHead
    from megatron_th.parallel.layers import VocabParallelHead

    monkeypatch.setattr(loss_mod, "LOSS_CHUNK_BYTES", 2 * 2 ** 20, raising=False)
    b, s, h, vocab = 2, 256, 16, 16384
    full = b * s * vocab * 4  # 32 MiB
    x, w, g = _case(b=b, s=s, h=h, padded=vocab)
    labels = torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(2))
    for head in (LMHead(vocab), VocabParallelHead(None, 0, vocab)):
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        with record_live_bytes("cpu") as rec:
            loss = head(xr, wr, labels)
            (loss * g).sum().backward()
            del loss
        assert rec.max_bytes <= full // 8, (type(head).__name__, rec.largest())
        assert rec.peak_bytes <= full // 3, (type(head).__name__, rec.peak_bytes / 2 ** 20)
        assert xr.grad is not None and wr.grad is not None


class _LargestTensor(TorchFunctionMode):
    """``.numel``: the most elements of any tensor a torch function returned inside the block (a
    TorchFunctionMode: unlike a TorchDispatchMode it does not import torch._dynamo, ~1.5 s a rank)."""

    numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def _tp_body(rank, world):
    from megatron_th.model import loss as loss_mod
    from megatron_th.model.loss import unchunked_cross_entropy
    from megatron_th.parallel import comm
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.layers import VocabParallelHead, shard

    grp = ParallelGroups.build(tp=world, pp=1).tp_group
    b, s, h, padded = 2, 18, 16, 64
    x, w, g = _case(b=b, s=s, h=h, padded=padded, seed=3)
    local = padded // world
    checked = []
    # 53: rank 1 holds 21 real rows and 11 padded ones; 29: rank 1 holds only padding
    for true_vocab in (53, 29):
        labels = torch.randint(0, true_vocab, (b, s), generator=torch.Generator().manual_seed(true_vocab))
        labels[0, 4] = -100  # ignored on every path, as F.cross_entropy does
        ref = _loss_and_grads(unchunked_cross_entropy, x, w, labels, g, true_vocab)
        for sp in (False, True):
            head = VocabParallelHead(grp, rank * local, true_vocab, sp)
            counts = {}
            for chunked in (True, False):
                # 7 tokens of 32 local vocab rows per chunk (36 tokens: a remainder), or one chunk
                loss_mod.LOSS_CHUNK_BYTES = 4 * local * (7 if chunked else 10 ** 6)
                xp = (comm.split(x, grp, 1) if sp else x.clone()).requires_grad_(True)
                wp = shard(w, 0, rank, world).requires_grad_(True)
                comm.COUNTER.reset()
                with _LargestTensor() as big:
                    loss = head(xp, wp, labels)
                    (loss * g).sum().backward()
                counts[chunked] = (dict(comm.COUNTER.bytes), dict(comm.COUNTER.calls))
                gx = comm.all_gather(xp.grad, grp, 1) if sp else xp.grad
                for name, a, r in (("loss", loss, ref[0]), ("grad x", gx, ref[1]),
                                   ("grad weight", wp.grad, shard(ref[2], 0, rank, world))):
                    if name == "grad weight" and true_vocab <= rank * local:
                        assert torch.count_nonzero(a) == 0
                    else:
                        assert _rel(a, r) <= 1e-6, (true_vocab, sp, chunked, name, _rel(a, r))
                if chunked:  # no [b*s, V_local] logits anywhere, forward or backward
                    assert big.numel < b * s * local, big.numel
            assert counts[True] == counts[False], counts  # same collectives, same bytes
            checked.append((true_vocab, sp))
    return checked


def test_vocab_parallel_chunked_tp2():
    assert D.run(_tp_body, 2, timeout=120) == [[(53, False), (53, True), (29, False), (29, True)]] * 2
