"""TP communication overlapped as Megatron does it (parallel/layers.py _ColumnParallelMatmul), and
the communication time the pipeline trace reads (comm.COUNTER.seconds / blocked / blocked_cpu).

One launch of 2 gloo ranks checks everything distributed: the overlapped path against the blocking
path it replaced (bitwise values and gradients, the same collectives in the same order, the same
bytes), the order of the backward (dx's matmul, its collective started, dW's matmul, the wait),
and the timing records.
"""
import pytest
import torch
import torch.nn.functional as F


class _Record(torch.utils._python_dispatch.TorchDispatchMode):
    """Appends "mm" for every matrix product to ``events``."""

    def __init__(self, events):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm):
            self.events.append("mm")
        return func(*args, **(kwargs or {}))


def _old_column(x, w, b, group, sp):
    """The path before the overlap: the region function of comm.py, then F.linear."""
    from megatron_th.parallel import comm

    return F.linear(comm.gather_from_sp(x, group) if sp else comm.copy_to_tp(x, group), w, b)


def _backward_order(group, sp):
    """The events of one column-parallel backward: matmuls, the collective's start and wait."""
    from megatron_th.parallel import comm
    from megatron_th.parallel.layers import ColumnParallelLinear

    events = []
    name = "reduce_scatter_start" if sp else "all_reduce_start"
    start, wait = getattr(comm, name), comm.Pending.wait
    setattr(comm, name, lambda *a, **k: (events.append("start"), start(*a, **k))[1])
    comm.Pending.wait = lambda self: (events.append("wait"), wait(self))[1]
    try:
        gen = torch.Generator().manual_seed(0)
        layer = ColumnParallelLinear(torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen), group,
                                     sequence_parallel=sp)
        x = torch.randn(2, 6 // (2 if sp else 1), 8, generator=gen, requires_grad=True)
        y = layer(x)
        with _Record(events):
            y.backward(torch.randn(y.shape, generator=gen))
    finally:
        setattr(comm, name, start)
        comm.Pending.wait = wait
    return events


def _timing(group):
    """Blocking collectives are timed when they return, an async one at its wait; reset() keeps
    the running totals the pipeline trace differences."""
    from megatron_th.parallel import comm

    comm.COUNTER.reset()
    before, before_cpu = comm.COUNTER.blocked, comm.COUNTER.blocked_cpu
    comm.all_reduce(torch.ones(4), group)
    ok = [("all_reduce", "tp") in comm.COUNTER.seconds, comm.COUNTER.calls[("all_reduce", "tp")] == 1]
    pending = comm.all_reduce_start(torch.ones(4), group)
    ok += [comm.COUNTER.calls[("all_reduce", "tp")] == 2, comm.COUNTER.bytes[("all_reduce", "tp")] == 32]
    timed = comm.COUNTER.seconds[("all_reduce", "tp")]
    summed = pending.wait()
    ok += [torch.equal(summed, torch.full((4,), 2.0)), comm.COUNTER.seconds[("all_reduce", "tp")] > timed,
           comm.COUNTER.blocked > before, comm.COUNTER.blocked_cpu >= before_cpu]
    blocked = comm.COUNTER.blocked
    comm.COUNTER.reset()
    ok += [comm.COUNTER.blocked == blocked, not comm.COUNTER.seconds]
    return ok


def _overlap_body(rank, world):
    """On 2 gloo ranks, the overlapped path against the path before it, for plain TP and SP, with
    and without a bias, and the vocab-parallel head: outputs and gradients bitwise equal, the same
    collectives in the same order with the same shapes, the same counted bytes; then the backward's
    order and the timing records."""
    import torch.distributed as dist

    from megatron_th.model import loss as loss_mod
    from megatron_th.parallel import comm
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.layers import VocabParallelHead, column_parallel_linear, vocab_parallel_lm_loss

    group = ParallelGroups.build(world, 1).tp_group
    comm.GROUP_NAMES.setdefault(group, "tp")
    log = []
    real = {"all_reduce": dist.all_reduce, "_AG": comm._AG, "_RS": comm._RS}

    def logged(name):
        def call(*a, **k):
            log.append((name, tuple(a[0].shape), bool(k.get("async_op", False))))
            return real[name](*a, **k)
        return call

    def run(fn, inputs, g):
        inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
        comm.COUNTER.reset()
        del log[:]
        y = fn(*inputs)
        y.backward(g)
        calls = [(name, shape) for name, shape, _ in log]  # async or not, the same collective
        return (y.detach(), [t.grad for t in inputs if t is not None], calls, dict(comm.COUNTER.bytes),
                dict(comm.COUNTER.calls), [a for _, _, a in log])

    def same(new, old, what):
        assert new[2] == old[2] and new[3] == old[3] and new[4] == old[4], (what, new[2:5], old[2:5])
        assert new[5].count(True) == 1 and True not in old[5], (what, new[5], old[5])  # dx's collective async
        for got, want in zip([new[0]] + new[1], [old[0]] + old[1]):
            assert torch.equal(got, want), what

    gen = torch.Generator().manual_seed(10 + rank)  # every rank its own shard and output gradient
    shared = torch.Generator().manual_seed(0)  # what the ranks hold in common
    dist.all_reduce = logged("all_reduce")
    comm._AG, comm._RS = logged("_AG"), logged("_RS")
    try:
        for sp in (False, True):
            for bias in (True, False):
                w = torch.randn(12, 16, generator=gen)
                b = torch.randn(12, generator=gen) if bias else None
                x = torch.randn(2, 8 // (world if sp else 1), 16, generator=gen if sp else shared)
                g = torch.randn(2, 8, 12, generator=gen)
                same(run(lambda x, w, b: column_parallel_linear(x, w, b, group, sp), (x, w, b), g),
                     run(lambda x, w, b: _old_column(x, w, b, group, sp), (x, w, b), g), (sp, bias))
            # the head when all tokens fit one loss chunk: the overlapped linear + _VocabParallelCE
            head = VocabParallelHead(group, vocab_start=rank * 20, true_vocab=37, sequence_parallel=sp)
            w = torch.randn(20, 16, generator=gen)
            x = torch.randn(2, 8 // (world if sp else 1), 16, generator=gen if sp else shared)
            labels = torch.randint(0, 37, (2, 8), generator=shared)
            labels[0, 1] = loss_mod.IGNORE_INDEX
            g = torch.rand(2, 8, generator=shared)
            def old_head(x, w):
                x = comm.gather_from_sp(x, group) if sp else comm.copy_to_tp(x, group)
                return vocab_parallel_lm_loss(x, w, labels, group, rank * 20, 37)
            same(run(lambda x, w: head(x, w, labels), (x, w), g), run(old_head, (x, w), g), ("head", sp))
    finally:
        dist.all_reduce, comm._AG, comm._RS = real["all_reduce"], real["_AG"], real["_RS"]
    return {"order": [_backward_order(group, sp) for sp in (False, True)], "timing": _timing(group)}


def test_overlapped_tp_equals_the_blocking_path_and_overlaps_dx_communication_with_dw():
    from tests import dist as D

    for res in D.run(_overlap_body, 2, timeout=120):
        # dx's matmul, its collective started, dW's matmul meanwhile, then the wait (Megatron's order)
        assert res["order"] == [["mm", "start", "mm", "wait"]] * 2, res["order"]
        assert all(res["timing"]), res["timing"]


def test_vocab_parallel_cross_entropy_gradient_reuses_the_softmax_once():
    """The backward turns the saved softmax into the gradient in place (no logits-sized copy, as
    Megatron's): same gradient as softmax - onehot, and a second backward is refused, not wrong."""
    from megatron_th.parallel.layers import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 16, (2, 5), generator=gen)
    labels[0, 0] = -100
    loss = vocab_parallel_cross_entropy(logits, labels, None, 0, 16)  # one shard: no communication
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.flatten(0, 1), labels.flatten(), reduction="none").view(2, 5)
    torch.testing.assert_close(loss, ref)
    loss.sum().backward(retain_graph=True)
    ref.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.sum().backward()
