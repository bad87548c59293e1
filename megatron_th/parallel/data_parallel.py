"""Data parallelism: contiguous gradient buffers, buckets, and their reduction over DP.

Gradients of this rank's parameters live in one contiguous buffer per gradient dtype, laid out in
backward order (last layer first) and cut into buckets of about ``--ddp-bucket-size`` elements,
each padded to a multiple of the DP size. A grad hook adds each micro-batch's gradient into the
buffer (``param.main_grad``, fp32 with ``--accumulate-allreduce-grads-in-fp32`` or under bf16).
A bucket is reduced once per step, after the last micro-batch's gradients have all landed: during
backward with ``--overlap-grad-reduce``, else at the end. The loss is normalised by the global
token count, so the reduction is a plain sum: averaging over DP happens once, whatever the
micro-batch count. Under Zero-1 the reduction is a reduce-scatter: DP rank r keeps the r-th part
of every bucket, and parameters live in a matching contiguous buffer so the updated parts can be
all-gathered back.

Some gradients must first be summed over other groups (sequence-parallel weights over TP, the
tied embedding over the first/last pipeline stages): their buckets are "deferred" and reduced
only after ``before_reduce`` has run.
"""
from __future__ import annotations

import torch

from megatron_th.parallel import comm

DEFAULT_BUCKET = 40_000_000


def bucket_layout(numels: list[int], bucket_size: int, dp: int) -> tuple[list[int], list[tuple[int, int, list[int]]]]:
    """Where each parameter's gradient lives in the contiguous buffer, for parameters in backward
    order: ``(offsets, buckets)``, ``offsets[i]`` the start of parameter i, each bucket
    ``(start, end, [i, ...])`` closed once it holds ``bucket_size`` elements (or at the last
    parameter) and padded to a multiple of ``dp``. The estimator (estimate/memory.py) uses this
    too, so predicted per-rank bytes include the very same padding."""
    offsets, buckets = [], []
    offset = start = 0
    current: list[int] = []
    for i, n in enumerate(numels):
        offsets.append(offset)
        offset += n
        current.append(i)
        if offset - start >= bucket_size or i == len(numels) - 1:
            end = start + -(-(offset - start) // dp) * dp  # pad to a multiple of DP
            buckets.append((start, end, current))
            offset = start = end
            current = []
    return offsets, buckets


class Bucket:
    def __init__(self, start: int, end: int, params: list):
        self.start, self.end, self.params = start, end, params
        self.pending = 0
        self.work = None
        self.deferred = False
        self.launched = False


class GradBuffers:
    def __init__(self, named_params, groups, grad_dtype=None, bucket_size=None, zero1=False, overlap=False,
                 deferred_names=()):
        self.groups, self.zero1, self.overlap = groups, zero1, overlap
        self.dp, self.dp_rank, self.group = groups.dp, groups.dp_rank, groups.dp_group
        bucket_size = bucket_size or DEFAULT_BUCKET
        params = [p for _, p in named_params]
        names = {id(p): n for n, p in named_params}
        order = list(reversed(params))  # backward order: the last layers' grads are ready first
        offsets, layout = bucket_layout([p.numel() for p in order], bucket_size, self.dp)
        self.param_index: dict = {id(p): off for p, off in zip(order, offsets)}  # id(param) -> offset in buffer
        self.buckets: list[Bucket] = []
        for start, end, idx in layout:
            b = Bucket(start, end, [order[i] for i in idx])
            b.deferred = any(names[id(q)] in deferred_names or getattr(q, "sequence_parallel", False)
                             for q in b.params)
            self.buckets.append(b)
        dtype = grad_dtype or (params[0].dtype if params else torch.float32)
        self.numel = layout[-1][1] if layout else 0
        device = params[0].device if params else "cpu"
        self.data = torch.zeros(self.numel, dtype=dtype, device=device)
        self.param_data = None
        if zero1:  # parameters move into a buffer of the same layout, so shards can be all-gathered
            self.param_data = torch.zeros(self.numel, dtype=params[0].dtype, device=device)
        for b in self.buckets:
            for p in b.params:
                off = self.param_index[id(p)]
                p.main_grad = self.data[off:off + p.numel()].view_as(p)
                p._bucket = b
                if zero1:
                    view = self.param_data[off:off + p.numel()].view_as(p)
                    view.copy_(p.detach())
                    p.data = view
                p.register_post_accumulate_grad_hook(self._hook)
        self.expected = 1

    # -- one step ------------------------------------------------------------------------------
    def start_step(self, num_micro_batches: int) -> None:
        """Before the first micro-batch: clear the buffer and arm the buckets."""
        self.data.zero_()
        for b in self.buckets:
            b.pending = len(b.params) * num_micro_batches
            b.work, b.launched = None, False

    @torch.no_grad()
    def _hook(self, p) -> None:
        p.main_grad.add_(p.grad)
        p.grad = None
        b = p._bucket
        b.pending -= 1
        if self.overlap and b.pending == 0 and not b.deferred:
            self._launch(b, async_op=True)

    def shard(self, b: Bucket) -> tuple[int, int]:
        """[start, end) of bucket b that this DP rank owns under Zero-1."""
        size = (b.end - b.start) // self.dp
        return b.start + self.dp_rank * size, b.start + (self.dp_rank + 1) * size

    def _launch(self, b: Bucket, async_op: bool) -> None:
        b.launched = True
        if self.dp == 1:
            return
        view = self.data[b.start:b.end]
        if self.zero1:
            lo, hi = self.shard(b)
            b.out = torch.empty(hi - lo, dtype=view.dtype, device=view.device)
            b.work = comm.reduce_scatter_into(b.out, view, self.group, async_op=async_op)
        else:
            work = comm.all_reduce(view, self.group, async_op=async_op)
            b.work = work if async_op else None

    def finish(self, before_reduce=None) -> None:
        """After the last backward: run ``before_reduce`` (cross-group sums of deferred grads),
        reduce every bucket not reduced yet, and wait for all of them."""
        if before_reduce is not None:
            before_reduce()
        for b in self.buckets:
            if not b.launched:
                self._launch(b, async_op=self.overlap)
        for b in self.buckets:
            if b.work is not None:
                b.work.wait()
            if self.zero1 and self.dp > 1:
                lo, hi = self.shard(b)
                self.data[lo:hi].copy_(b.out)

    @torch.no_grad()
    def gather_params(self) -> None:
        """Zero-1: every DP rank's updated part of every bucket -> all ranks' parameters."""
        if not self.zero1 or self.dp == 1:
            return
        works = []
        for b in self.buckets:
            lo, hi = self.shard(b)
            part = self.param_data[lo:hi].clone()
            works.append(comm.all_gather_into(self.param_data[b.start:b.end], part, self.group,
                                              async_op=True))
        for w in works:
            w.wait()

    def storage_bytes(self) -> dict:
        out = {"grads": self.data.numel() * self.data.element_size()}
        if self.param_data is not None:
            out["params"] = self.param_data.numel() * self.param_data.element_size()
        return out
