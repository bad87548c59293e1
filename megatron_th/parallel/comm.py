"""Collectives with a byte counter, and the autograd-aware TP / sequence-parallel regions.

Every collective and p2p call goes through this module and is recorded as (op, group, bytes) in
``COUNTER``; tests and benchmarks compare a step's bytes with the analytic volume. Bytes are the
message size as nccl-tests reports it: the tensor for all-reduce and send/recv, the full
(gathered) output for all-gather, the full (unreduced) input for reduce-scatter. ``COUNTER`` also
sums the wall seconds each blocking call held its caller (``seconds``, ``blocked``), waiting for
the peers included, and the process CPU seconds spent meanwhile (``blocked_cpu``: the backend's
copies and polling, all threads): the pipeline trace splits each op into compute and
communication with them (benchmarks/vs_megatron_core.py). An ``async_op`` call is counted but not
timed (its wait is wherever the caller waits; ``Pending.wait`` times it). On a GPU the host
returns before NCCL finishes, so there the seconds measure host blocking only.

Activations are ``[b, s, h]``; sequence parallelism splits dim 1 (the sequence).
Torch renamed collectives over time (``all_gather_into_tensor`` -> ``all_gather_single``,
``reduce_scatter_tensor`` -> ``reduce_scatter_single`` in 2.13): ``_AG`` / ``_RS`` below are the
one compatibility point, so older torch on GPU clusters works too.

Under ``torch.compile`` (``--compile`` compiles each transformer layer: training/compile.py) the
Python counting would run once, at trace time, and a counter mutated inside an autograd.Function
breaks dynamo's graph. So while dynamo traces, ``all_reduce`` / ``all_gather`` / ``reduce_scatter``
call the custom ops below instead (``megatron_th::all_reduce_`` etc.): opaque graph nodes whose
eager implementations run the same c10d collective and count it at run time, in the compiled
forward and backward alike, so a compiled step counts the same bytes as an eager one.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.distributed as dist

_AG = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_RS = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class ByteCounter:
    """Per-process record of communication: ``bytes[(op, group_name)]``, ``calls[...]`` and
    ``seconds[...]`` (wall seconds of blocking calls); ``blocked``: all those seconds and
    ``blocked_cpu``: the process CPU seconds during them, running totals that reset() keeps
    (callers read differences)."""

    def __init__(self):
        self.blocked = self.blocked_cpu = 0.0
        self.reset()

    def reset(self):
        self.bytes = defaultdict(int)
        self.calls = defaultdict(int)
        self.seconds = defaultdict(float)

    def add(self, op: str, group_name: str, nbytes: int):
        self.bytes[(op, group_name)] += nbytes
        self.calls[(op, group_name)] += 1

    def add_time(self, op: str, group_name: str, seconds: float, cpu: float = 0.0):
        self.seconds[(op, group_name)] += seconds
        self.blocked += seconds
        self.blocked_cpu += cpu

    def total(self, op: str | None = None, group: str | None = None) -> int:
        return sum(v for (o, g), v in self.bytes.items() if (op is None or o == op) and (group is None or g == group))


COUNTER = ByteCounter()
GROUP_NAMES: dict = {}  # process group -> "tp" / "dp" / "pp" / ... (set by whoever builds groups)


def _name(group) -> str:
    return GROUP_NAMES.get(group, "world" if group is None else "other")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _blocking(kind: str, group, fn, *args, **kwargs):
    """``fn(*args, group=group, **kwargs)``, its wall time added to COUNTER.seconds[(kind, group)]
    (and the process CPU time meanwhile to COUNTER.blocked_cpu)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, group=group, **kwargs)
    COUNTER.add_time(kind, _name(group), time.perf_counter() - t0, time.process_time() - c0)
    return out


def size(group) -> int:
    """Ranks in ``group``; ``None`` means "no group": a single process, no communication."""
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def rank(group) -> int:
    return dist.get_rank(group) if group is not None and dist.is_initialized() else 0


# -- the collectives as custom ops, for compiled code (see the module docstring) ------------------
def _group(group_name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group
    return _resolve_process_group(group_name)


@torch.library.custom_op("megatron_th::all_reduce_", mutates_args=("t",))
def _all_reduce_op(t: torch.Tensor, group_name: str, reduce_max: bool) -> None:
    """In-place sum (or max) of ``t`` over the group named ``group_name``; counted."""
    group = _group(group_name)
    COUNTER.add("all_reduce", _name(group), _nbytes(t))
    _blocking("all_reduce", group, dist.all_reduce, t, op=dist.ReduceOp.MAX if reduce_max else dist.ReduceOp.SUM)


@torch.library.custom_op("megatron_th::all_gather", mutates_args=())
def _all_gather_op(t: torch.Tensor, group_name: str) -> torch.Tensor:
    """Every rank's contiguous ``t`` concatenated along dim 0; counted."""
    group = _group(group_name)
    out = t.new_empty((dist.get_world_size(group) * t.shape[0],) + tuple(t.shape[1:]))
    COUNTER.add("all_gather", _name(group), _nbytes(out))
    _blocking("all_gather", group, _AG, out, t)
    return out


@_all_gather_op.register_fake
def _(t, group_name):
    return t.new_empty((dist.get_world_size(_group(group_name)) * t.shape[0],) + tuple(t.shape[1:]))


@torch.library.custom_op("megatron_th::reduce_scatter", mutates_args=())
def _reduce_scatter_op(t: torch.Tensor, group_name: str) -> torch.Tensor:
    """This rank's dim-0 part of the sum of every rank's contiguous ``t``; counted."""
    group = _group(group_name)
    out = t.new_empty((t.shape[0] // dist.get_world_size(group),) + tuple(t.shape[1:]))
    COUNTER.add("reduce_scatter", _name(group), _nbytes(t))
    _blocking("reduce_scatter", group, _RS, out, t)
    return out


@_reduce_scatter_op.register_fake
def _(t, group_name):
    return t.new_empty((t.shape[0] // dist.get_world_size(_group(group_name)),) + tuple(t.shape[1:]))


def _tracing() -> bool:
    return torch.compiler.is_compiling()


# -- plain collectives (counted) -----------------------------------------------------------------
def all_reduce(t: torch.Tensor, group=None, op=dist.ReduceOp.SUM, async_op: bool = False):
    """In place; returns the tensor, or with ``async_op`` the work handle (None if no-op)."""
    if size(group) > 1 and not async_op and _tracing() and op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
        _all_reduce_op(t, group.group_name, op == dist.ReduceOp.MAX)
        return t
    if size(group) > 1:
        COUNTER.add("all_reduce", _name(group), _nbytes(t))
        if async_op:
            return dist.all_reduce(t, op=op, group=group, async_op=True)
        _blocking("all_reduce", group, dist.all_reduce, t, op=op)
        return t
    return None if async_op else t


def reduce_scatter_into(out: torch.Tensor, t: torch.Tensor, group, async_op: bool = False):
    """Sum ``t`` (1-D, divisible by the group size) over the group; ``out`` gets this rank's part."""
    COUNTER.add("reduce_scatter", _name(group), _nbytes(t))
    if async_op:
        return _RS(out, t, group=group, async_op=True)
    return _blocking("reduce_scatter", group, _RS, out, t)


def all_gather_into(out: torch.Tensor, t: torch.Tensor, group, async_op: bool = False):
    """Concatenate every rank's ``t`` (1-D) into ``out``."""
    COUNTER.add("all_gather", _name(group), _nbytes(out))
    if async_op:
        return _AG(out, t, group=group, async_op=True)
    return _blocking("all_gather", group, _AG, out, t)


def all_gather(t: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    n = size(group)
    if n == 1:
        return t
    x = t.movedim(dim, 0).contiguous()
    if _tracing():
        return _all_gather_op(x, group.group_name).movedim(0, dim)
    out = torch.empty((n * x.shape[0],) + tuple(x.shape[1:]), dtype=t.dtype, device=t.device)
    COUNTER.add("all_gather", _name(group), _nbytes(out))
    _blocking("all_gather", group, _AG, out, x)
    return out.movedim(0, dim)


def reduce_scatter(t: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """Sum ``t`` over the group; this rank gets its part along ``dim`` (blocking, timed into
    COUNTER). Raises ValueError when ``dim`` does not divide by the group size."""
    n = size(group)
    if n == 1:
        return t
    x = _dim_first(t, n, dim)
    if _tracing():
        return _reduce_scatter_op(x, group.group_name).movedim(0, dim)
    out = _part_of(x, n)
    COUNTER.add("reduce_scatter", _name(group), _nbytes(x))
    _blocking("reduce_scatter", group, _RS, out, x)
    return out.movedim(0, dim)


def _dim_first(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``t`` with ``dim`` moved first, contiguous, for a reduce-scatter over ``n`` ranks.
    Raises ValueError when that dimension does not divide by ``n``."""
    x = t.movedim(dim, 0).contiguous()
    if x.shape[0] % n:
        raise ValueError(f"reduce_scatter: dim {dim} of size {x.shape[0]} is not divisible by {n} ranks")
    return x


def _part_of(x: torch.Tensor, n: int) -> torch.Tensor:
    """An empty buffer for this rank's part of ``x`` (dim 0 split over ``n`` ranks)."""
    return torch.empty((x.shape[0] // n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)


class Pending:
    """A collective started without waiting (``all_reduce_start`` / ``reduce_scatter_start``), so
    the caller can compute meanwhile; ``wait()`` returns its result, the wait timed into COUNTER."""

    def __init__(self, work, kind: str, group, result, inputs=None):
        self.work, self.kind, self.group, self.result = work, kind, group, result
        self.inputs = inputs  # the collective's input, alive until it completed

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            self.work.wait()
            COUNTER.add_time(self.kind, _name(self.group), time.perf_counter() - t0, time.process_time() - c0)
            self.work = self.inputs = None
        return self.result() if callable(self.result) else self.result


def all_reduce_start(t: torch.Tensor, group) -> Pending:
    """Starts the in-place sum of contiguous ``t`` over the group (counted as all_reduce);
    ``wait()`` returns ``t`` summed."""
    if size(group) == 1:
        return Pending(None, "all_reduce", group, t)
    COUNTER.add("all_reduce", _name(group), _nbytes(t))
    return Pending(dist.all_reduce(t, group=group, async_op=True), "all_reduce", group, t)


def reduce_scatter_start(t: torch.Tensor, group, dim: int = 0) -> Pending:
    """Starts ``reduce_scatter(t, group, dim)``; ``wait()`` returns this rank's part (the same
    bytes and result as the blocking call)."""
    n = size(group)
    if n == 1:
        return Pending(None, "reduce_scatter", group, t)
    x = _dim_first(t, n, dim)
    out = _part_of(x, n)
    COUNTER.add("reduce_scatter", _name(group), _nbytes(x))
    work = _RS(out, x, group=group, async_op=True)
    return Pending(work, "reduce_scatter", group, lambda: out.movedim(0, dim), inputs=x)


def split(t: torch.Tensor, group, dim: int) -> torch.Tensor:
    """This rank's chunk along ``dim`` (no communication)."""
    n = size(group)
    if n == 1:
        return t
    if t.shape[dim] % n:
        raise ValueError(f"cannot split dim {dim} of size {t.shape[dim]} into {n} TP shards")
    return t.chunk(n, dim=dim)[rank(group)].contiguous()


# -- autograd regions ----------------------------------------------------------------------------
class _CopyToTP(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce (the input feeds every TP shard)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g.contiguous(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """Forward: all-reduce of partial sums. Backward: identity."""

    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x.contiguous(), group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherFromSP(torch.autograd.Function):
    """Forward: all-gather along the sequence. Backward: reduce-scatter (every shard's gradient
    contributions to each sequence chunk are summed on its owner)."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter(g, ctx.group, ctx.dim), None, None


class _ReduceScatterToSP(torch.autograd.Function):
    """Forward: reduce-scatter partial sums along the sequence. Backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return reduce_scatter(x, group, dim)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, ctx.group, ctx.dim), None, None


class _ScatterToSP(torch.autograd.Function):
    """Forward: keep this rank's sequence chunk. Backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return split(x, group, dim)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, ctx.group, ctx.dim), None, None


def copy_to_tp(x, group):
    return _CopyToTP.apply(x, group) if size(group) > 1 else x


def reduce_from_tp(x, group):
    return _ReduceFromTP.apply(x, group) if size(group) > 1 else x


def gather_from_sp(x, group, dim: int = 1):
    return _GatherFromSP.apply(x, group, dim) if size(group) > 1 else x


def reduce_scatter_to_sp(x, group, dim: int = 1):
    return _ReduceScatterToSP.apply(x, group, dim) if size(group) > 1 else x


def scatter_to_sp(x, group, dim: int = 1):
    return _ScatterToSP.apply(x, group, dim) if size(group) > 1 else x
