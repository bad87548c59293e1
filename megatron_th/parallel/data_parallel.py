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

Zero-1 parameter all-gather, one per bucket after the optimizer step (``gather_params``): waited
there, or with ``--overlap-param-gather`` (``enable_param_gather_overlap``) overlapped with the
next forward, as Megatron-LM's ``param_and_grad_buffer.py`` / ``distributed_data_parallel.py`` do:
the step launches the gather of the first bucket in forward order (the last in gradient order)
asynchronously and returns; a forward pre-hook on every module waits, just before a module runs,
for the buckets of its parameters (and of parameters passed to it as arguments: the tied head
weight) and then launches the next bucket's gather in forward order, so one bucket is in flight
while the previous one computes. Only the first micro-batch after a step waits; a skipped step
gathers nothing. Every DP rank runs the same modules in the same order, so the gathers are
issued in the same order everywhere (tests/test_data_parallel.py records them).
"""
from __future__ import annotations

import functools

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
    def __init__(self, start: int, end: int, params: list, index: int = 0):
        self.start, self.end, self.params, self.index = start, end, params, index
        self.pending = 0
        self.work = None
        self.deferred = False
        self.launched = False
        # Zero-1 parameter all-gather: stale = this rank's part was updated and not yet sent;
        # param_work: the gather in flight
        self.param_stale = False
        self.param_work = None


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
            b = Bucket(start, end, [order[i] for i in idx], len(self.buckets))
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
        self.overlap_param_gather = False  # set by enable_param_gather_overlap
        self.unsynced = 0  # buckets whose parameter all-gather is not complete yet
        self._pre_hooks: list = []

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
        """After the last backward: finish any parameter all-gather still pending (a bucket no
        forward used), run ``before_reduce`` (cross-group sums of deferred grads), reduce every
        bucket not reduced yet, and wait for all of them."""
        self.finish_param_sync()
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

    # -- Zero-1 parameter all-gather ---------------------------------------------------------
    @torch.no_grad()
    def gather_params(self, overlap: bool = False) -> None:
        """Zero-1, after this DP rank updated its part of every bucket: every rank's part -> all
        ranks' parameters, one all-gather per bucket. Waited here, unless ``overlap`` and
        ``enable_param_gather_overlap`` ran: then the first bucket (forward order) is launched
        asynchronously and the others are launched and waited by the next forward's pre-hooks
        (module docstring); ``finish_param_sync`` completes them all. Gathers still pending from
        an earlier call are finished first. Collective over DP: every rank calls it alike."""
        if not self.zero1 or self.dp == 1:
            return
        self.finish_param_sync()
        for b in self.buckets:
            b.param_stale = True
        self.unsynced = len(self.buckets)
        if overlap and self.overlap_param_gather:
            self._launch_gather(self.buckets[-1])
        else:
            self.finish_param_sync()

    @torch.no_grad()
    def finish_param_sync(self) -> None:
        """Complete every pending parameter all-gather: launch those not launched yet (forward
        order) and wait for all. Call before anything reads or writes the parameters outside a
        forward (the optimizer step, evaluation by other means, EMA swap, checkpoint save, the
        end of training). A no-op when nothing is pending."""
        if not self.unsynced:
            return
        for b in reversed(self.buckets):
            if b.param_stale:
                self._launch_gather(b)
        for b in reversed(self.buckets):
            self._wait_gather(b, chain=False)

    def _launch_gather(self, b: Bucket) -> None:
        """In place, as Megatron: the input is this rank's part of the output (NCCL and gloo
        allow it), so no copy exists; the gather reads that part and writes the others, so
        nothing may write it until the gather is waited (the next step finishes first)."""
        lo, hi = self.shard(b)
        b.param_work = comm.all_gather_into(self.param_data[b.start:b.end], self.param_data[lo:hi], self.group,
                                            async_op=True)
        b.param_stale = False

    def _wait_gather(self, b: Bucket, chain: bool = True) -> None:
        """Make bucket ``b``'s parameters current (launch its gather if needed, wait); with
        ``chain``, then launch the gather of the next bucket in forward order (Megatron's
        ``next_param_gather_bucket_group``), so it runs while ``b``'s modules compute."""
        if b.param_stale:
            self._launch_gather(b)
        if b.param_work is None:
            return
        b.param_work.wait()
        b.param_work = None
        self.unsynced -= 1
        if chain and b.index > 0 and self.buckets[b.index - 1].param_stale:
            self._launch_gather(self.buckets[b.index - 1])

    def enable_param_gather_overlap(self, modules) -> None:
        """``--overlap-param-gather``: from now on ``gather_params(overlap=True)`` leaves the
        gathers to the next forward. ``modules``: the roots (model chunks) whose forwards use
        this buffer's parameters; a forward pre-hook on each of their submodules waits for the
        buckets of the module's own parameters and of parameters passed to it as arguments. A
        submodule compiled with torch.compile (``Module.compile``) runs its hooks inside the
        graph, where they do nothing: the buckets of everything under it are waited by its
        root's pre-hook instead (before the chunk's forward, so without overlap inside it).
        Raises ValueError without Zero-1 by flat ranges (no parameter buffer to gather)."""
        if not self.zero1:
            raise ValueError("--overlap-param-gather needs Zero-1 by flat ranges (GradBuffers(zero1=True))")
        self.overlap_param_gather = True
        ours = {id(p) for b in self.buckets for p in b.params}
        for root in modules:
            for m in root.modules():
                idx = sorted({p._bucket.index for p in m.parameters(recurse=False) if id(p) in ours}, reverse=True)
                hook = functools.partial(self._pre_hook, [self.buckets[i] for i in idx], root if m is root else None)
                self._pre_hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))

    def _pre_hook(self, buckets, root, module, args, kwargs) -> None:
        if torch.compiler.is_compiling() or not self.unsynced:  # traced: a no-op graph (root covers it)
            return
        if root is not None:
            for m in root.modules():
                if getattr(m, "_compiled_call_impl", None) is not None:
                    for b in self._buckets_of(m.parameters()):
                        self._wait_gather(b)
        for b in buckets:
            self._wait_gather(b)
        for b in self._buckets_of(a for a in (*args, *kwargs.values()) if isinstance(a, torch.nn.Parameter)):
            self._wait_gather(b)

    def _buckets_of(self, params) -> list:
        """This buffer's buckets holding any of ``params``, in forward order, once each."""
        found = {b.index: b for p in params if (b := getattr(p, "_bucket", None)) is not None
                 and b.index < len(self.buckets) and self.buckets[b.index] is b}
        return [found[i] for i in sorted(found, reverse=True)]

    def storage_bytes(self) -> dict:
        out = {"grads": self.data.numel() * self.data.element_size()}
        if self.param_data is not None:
            out["params"] = self.param_data.numel() * self.param_data.element_size()
        return out
