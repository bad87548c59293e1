"""Pipeline execution: runs a schedule order (schedule_order.py) over this rank's model chunks.

Chunk c on PP rank r is virtual stage ``c*p + r`` and holds layer block ``c*p + r``. Activations
and their gradients move between virtual stages with tagged isend/irecv (gloo or NCCL): every send
is posted asynchronously and a receive blocks only when its data is needed, so the schedules'
order cannot deadlock. Shapes are known in advance (``[mbs, s (/TP under SP), h]``). Each op can be
recorded in a trace ``(op, micro-batch, chunk, start, end)`` for the bubble tools.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megatron_th.parallel import comm
from megatron_th.parallel.schedule_order import chunk, micro_batch, order
from megatron_th.training.step import model_inputs


class P2P:
    """Tagged point-to-point transfers between virtual stages, counted as ("send", "pp")."""

    def __init__(self, groups, nvs: int):
        self.groups, self.nvs, self.pending = groups, nvs, []

    def _tag(self, mb: int, vs: int, backward: bool) -> int:
        return (mb * self.nvs + vs) * 2 + int(backward)

    def _rank_of(self, vs: int) -> int:
        return self.groups.stage_rank(vs % self.groups.pp)

    def send(self, t: torch.Tensor, mb: int, to_vs: int, backward: bool) -> None:
        t = t.detach().contiguous()
        comm.COUNTER.add("send", "pp", t.numel() * t.element_size())
        self.pending.append((dist.isend(t, self._rank_of(to_vs), tag=self._tag(mb, to_vs, backward)), t))

    def recv(self, shape, dtype, device, mb: int, my_vs: int, backward: bool) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=device)
        src_vs = my_vs + 1 if backward else my_vs - 1
        dist.irecv(t, self._rank_of(src_vs), tag=self._tag(mb, my_vs, backward)).wait()
        return t

    def flush(self) -> None:
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()


class PipelineRunner:
    """One step of forward/backward over the micro-batches with 1F1B or interleaved 1F1B."""

    def __init__(self, chunks: list, groups, act_shape, dtype, device, trace: bool = False):
        self.chunks, self.groups = chunks, groups
        self.p, self.v, self.r = groups.pp, len(chunks), groups.pp_rank
        self.nvs = self.p * self.v
        self.act_shape, self.dtype, self.device = tuple(act_shape), dtype, device
        self.trace_enabled, self.trace = trace, []
        self.max_inflight = 0

    def _vs(self, c: int) -> int:
        return c * self.p + self.r

    def run(self, micro_batches: list[dict], num_tokens: float, loss_scale: float, forward_only: bool = False):
        """Returns (summed masked loss on the last stage (0 elsewhere), per-sample stats if forward_only)."""
        p2p = P2P(self.groups, self.nvs)
        m = len(micro_batches)
        saved, live = {}, 0
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        stats = []
        record = self.trace_enabled and not forward_only  # evaluation never replaces a step's trace
        if record:
            self.trace = []
        for kind, k in order(self.p, self.r, m, self.v, forward_only):
            c = chunk(k, self.p, self.v, kind == "F")
            mb_id, vs = micro_batch(k, self.p, self.v), self._vs(c)
            mb = micro_batches[mb_id]
            t0 = time.perf_counter()
            if kind == "F":
                out, x = self._forward(c, vs, mb, mb_id, p2p, num_tokens, loss_scale, forward_only, stats)
                if vs == self.nvs - 1:
                    total += out[1]
                    out = out[0]
                if not forward_only:
                    saved[(mb_id, c)] = (x, out)
                    live += 1
                    self.max_inflight = max(self.max_inflight, live)
            else:
                x, out = saved.pop((mb_id, c))
                live -= 1
                if vs == self.nvs - 1:
                    out.backward()
                else:
                    grad = p2p.recv(self.act_shape, self.dtype, self.device, mb_id, vs, backward=True)
                    torch.autograd.backward(out, grad)
                if vs > 0:
                    p2p.send(x.grad, mb_id, vs - 1, backward=True)
            if record:
                self.trace.append({"op": kind, "micro_batch": mb_id, "chunk": c, "start": t0,
                                   "end": time.perf_counter()})
        p2p.flush()
        return total, stats

    def _forward(self, c, vs, mb, mb_id, p2p, num_tokens, loss_scale, forward_only, stats):
        inputs = model_inputs(mb, self.device)
        model = self.chunks[c]
        x = None
        if vs > 0:
            x = p2p.recv(self.act_shape, self.dtype, self.device, mb_id, vs, backward=False)
            x.requires_grad_(not forward_only)
            inputs.pop("tokens")
            inputs["hidden_states"] = x
        if vs < self.nvs - 1:
            inputs.pop("labels", None)
            with torch.set_grad_enabled(not forward_only):
                out = model(**inputs)
            p2p.send(out, mb_id, vs + 1, backward=False)
            return out, x
        with torch.set_grad_enabled(not forward_only):
            per_token = model(**inputs)
        mask = mb["loss_mask"].to(self.device)
        loss = (per_token * mask).sum()
        if forward_only:
            stats.append(torch.stack([(per_token.double() * mask).sum(1), mask.double().sum(1)], dim=1))
        return (loss * (loss_scale / num_tokens), loss.detach().double()), x
