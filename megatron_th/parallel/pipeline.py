"""Pipeline execution: runs a schedule order (schedule_order.py) over this rank's model chunks.

Chunk c on PP rank r is virtual stage ``c*p + r`` and holds layer block ``c*p + r``. Shapes are
known in advance (``[mbs, s (/TP under SP), h]``). Each op can be recorded in a trace
``(op, micro-batch, chunk, start, end)`` for the bubble tools, with ``comm``: the seconds the op
spent in blocking collectives (TP, comm.COUNTER.blocked), ``cpu`` / ``comm_cpu``: the process CPU
seconds of the op and of its collectives, and on the first op of each step the ``exchange``
[start, end] made before it with its ``exchange_cpu`` (on the last op also ``exchange_after``,
``exchange_after_cpu``): the p2p transfers and the wait for the neighbouring stages (the bubble)
together. Wall seconds are perf_counter, CPU seconds process_time (all the process's threads).

Point-to-point, written for NCCL's rules (PyTorch ``ProcessGroupNCCL``; docs/parallelism.md):
NCCL ignores tags and matches the messages of a rank pair first-in-first-out per communicator,
runs a communicator's operations in issue order on one stream, and completes a send larger than
its eager buffer (about 1 MiB over the network, 4 MiB over NVLink) only once the peer's receive
runs. Posting sends early and receiving later, as a tag-matching backend allows, hangs there: in
1F1B stage r would send activation k+1 then wait for gradient k while stage r+1 sends gradient k
then waits for activation k+1. So, as Megatron-LM's ``p2p_communication.py`` does:

- the rank's schedule is cut into steps (one op each in 1F1B; interleaved: a warm-up forward,
  a steady-state forward + backward pair, a cool-down backward) and before each step the rank
  makes one *exchange*: the sends of the step just run and the receives of the step about to
  run, issued together (``batch_isend_irecv``) and waited at once (p2p_plan.py says which, as a
  pure function, and why other cuts deadlock or lose the overlap);
- activations (to the next stage) and gradients (to the previous stage) travel on two different
  communicators (``groups.pp_fwd_group`` / ``pp_bwd_group``), so every (communicator, sender,
  receiver) carries one kind of message, in the same order on both ends. With PP=2 both
  neighbours are the same rank and one communicator could hand a gradient to an activation buffer.
- each p2p communicator runs one collective at construction, so no batched call is its first
  collective (``batch_isend_irecv`` then needs every rank of the group).

tests/test_pipeline_p2p_nccl.py records the real call order of this executor (gloo) and replays it
through a model of those NCCL rules for p in {2, 4, 8}, every m up to 2p+1, v in {1, 2},
training and evaluation; the order before this design is kept there as a fixture the model
must call a deadlock.

A sent activation is freed as soon as its send completes (Megatron's ``deallocate_output_tensor``):
only the autograd graph behind it is kept for the backward, which then runs through the engine
directly because the output no longer has its shape. A sent gradient is dropped the same way.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megatron_th.parallel import comm
from megatron_th.parallel.p2p_plan import exchanges, op_stage, steps
from megatron_th.training.step import model_inputs


def _free_storage(out: torch.Tensor) -> None:
    """Release an output's memory once it is sent, keeping its autograd node (not for views)."""
    if out.requires_grad and out._base is None:
        out.data = torch.empty((1,), dtype=out.dtype, device=out.device)


def _free_sent(outputs: list) -> None:
    """_free_storage on each, then forget them (no loop variable may outlive the call: an output
    keeps its graph, and through it the stage's input and that input's gradient, alive)."""
    for out in outputs:
        _free_storage(out)
    outputs.clear()


def _backward(out: torch.Tensor, grad: torch.Tensor) -> None:
    """``torch.autograd.backward(out, grad)`` for an output whose storage was freed: the engine is
    called directly (as Megatron's ``custom_backward``), skipping the shape check of out vs grad."""
    torch.autograd.Variable._execution_engine.run_backward(
        tensors=(out,), grad_tensors=(grad,), keep_graph=False, create_graph=False, inputs=(),
        allow_unreachable=True, accumulate_grad=True)


class P2P:
    """Batched exchanges between virtual stages, counted as ("send", "pp")."""

    def __init__(self, groups, act_shape, dtype, device):
        self.groups = groups
        self.act_shape, self.dtype, self.device = act_shape, dtype, device

    def rank_of(self, vs: int) -> int:
        return self.groups.stage_rank(vs % self.groups.pp)

    def group(self, kind: str):
        return self.groups.pp_fwd_group if kind == "act" else self.groups.pp_bwd_group

    def exchange(self, send: list, outgoing: dict, recv: list) -> dict:
        """One exchange of p2p_plan.exchanges: ``send`` and ``recv`` list messages
        ``(kind, micro_batch, src_vs, dst_vs)``; ``outgoing[msg]`` is the tensor of each sent one.
        The ops of each communicator form one batch and every op is waited before returning, so
        the caller may free what it sent. Returns ``{msg: received tensor}``."""
        ops = {"act": [], "grad": []}
        for msg in send:
            t = outgoing.pop(msg).contiguous()
            comm.COUNTER.add("send", "pp", t.numel() * t.element_size())
            ops[msg[0]].append(dist.P2POp(dist.isend, t, self.rank_of(msg[3]), self.group(msg[0])))
        received = {}
        for msg in recv:
            received[msg] = torch.empty(self.act_shape, dtype=self.dtype, device=self.device)
            ops[msg[0]].append(dist.P2POp(dist.irecv, received[msg], self.rank_of(msg[2]), self.group(msg[0])))
        t0, c0 = time.perf_counter(), time.process_time()
        works = [w for kind in ("act", "grad") if ops[kind] for w in dist.batch_isend_irecv(ops[kind])]
        for w in works:
            w.wait()
        if works:
            comm.COUNTER.add_time("send", "pp", time.perf_counter() - t0, time.process_time() - c0)
        return received

    def warm_up(self) -> None:
        """One collective on each p2p communicator, so that no batched p2p call is its first."""
        for grp in (self.groups.pp_fwd_group, self.groups.pp_bwd_group):
            dist.barrier(group=grp)  # carries no data: not counted


class PipelineRunner:
    """One step of forward/backward over the micro-batches with 1F1B or interleaved 1F1B."""

    def __init__(self, chunks: list, groups, act_shape, dtype, device, trace: bool = False, task=None):
        if task is None:
            from megatron_th.training.tasks.lm import LanguageModelTask
            task = LanguageModelTask(None)
        self.chunks, self.groups, self.task = chunks, groups, task
        self.p, self.v, self.r = groups.pp, len(chunks), groups.pp_rank
        self.nvs = self.p * self.v
        self.act_shape, self.dtype, self.device = tuple(act_shape), dtype, device
        self.trace_enabled, self.trace = trace, []
        self.max_inflight = 0
        self.p2p = P2P(groups, self.act_shape, dtype, device)
        self.p2p.warm_up()

    def run(self, micro_batches: list[dict], num_tokens: float, loss_scale: float, forward_only: bool = False):
        """Returns (the task's summed statistics (float64 [k], element 0 the summed loss) on the last
        stage, zeros elsewhere; per-sample evaluation statistics if forward_only)."""
        p, r, v, m = self.p, self.r, self.v, len(micro_batches)
        self._saved, self._live, self._stats, self._inputs = {}, 0, [], {}
        self._total = torch.zeros(len(self.task.stat_names), dtype=torch.float64, device=self.device)
        record = self.trace_enabled and not forward_only  # evaluation never replaces a step's trace
        if record:
            self.trace = []
        plan = exchanges(p, r, m, v, forward_only)
        outgoing, to_free = {}, []  # tensors of the messages the next exchange sends
        for ex, step in zip(plan, steps(p, r, m, v, forward_only)):
            x0, xc = time.perf_counter(), time.process_time()
            received = self.p2p.exchange(ex["send"], outgoing, ex["recv"])
            exchange, exchange_cpu = [x0, time.perf_counter()], time.process_time() - xc
            _free_sent(to_free)  # sent: only their autograd nodes are still needed
            for kind, k in step:
                mb_id, vs = op_stage(p, r, v, kind, k)
                t0, c0 = time.perf_counter(), comm.COUNTER.blocked
                u0, b0 = time.process_time(), comm.COUNTER.blocked_cpu
                if kind == "F":
                    self._forward(vs, mb_id, micro_batches[mb_id], received, outgoing, to_free,
                                  num_tokens, loss_scale, forward_only)
                else:
                    self._backward_op(vs, mb_id, received, outgoing)
                if record:
                    self.trace.append({"op": kind, "micro_batch": mb_id, "chunk": vs // p, "start": t0,
                                       "end": time.perf_counter(), "comm": comm.COUNTER.blocked - c0,
                                       "cpu": time.process_time() - u0, "comm_cpu": comm.COUNTER.blocked_cpu - b0,
                                       "exchange": exchange, "exchange_cpu": exchange_cpu})
                exchange = exchange_cpu = None  # the exchange before a step is recorded on its first op
            del received
        x0, xc = time.perf_counter(), time.process_time()
        self.p2p.exchange(plan[-1]["send"], outgoing, [])
        if record and self.trace:
            self.trace[-1]["exchange_after"] = [x0, time.perf_counter()]
            self.trace[-1]["exchange_after_cpu"] = time.process_time() - xc
        _free_sent(to_free)
        total, stats = self._total, self._stats
        self._saved = self._stats = self._total = self._inputs = None
        return total, stats

    def _micro_batch_inputs(self, mb_id: int, mb: dict, chunk: int) -> dict:
        """model_inputs once per micro-batch on this rank (device copies and the document plan,
        with its flex block mask), shared by its v chunks' forwards, which run in chunk order."""
        base = self._inputs.pop(mb_id, None) or model_inputs(mb, self.device)
        if chunk < self.v - 1:
            self._inputs[mb_id] = base
        return dict(base)

    def _forward(self, vs, mb_id, mb, received, outgoing, to_free, num_tokens, loss_scale, forward_only):
        inputs = self._micro_batch_inputs(mb_id, mb, vs // self.p)
        model = self.chunks[vs // self.p]
        x = None
        if vs > 0:
            x = received.pop(("act", mb_id, vs - 1, vs))
            x.requires_grad_(not forward_only)
            inputs.pop("tokens", None)  # not loaded on stages without the embedding (training/pretrain.py)
            inputs["hidden_states"] = x
        if vs < self.nvs - 1:
            inputs.pop("labels", None)
            with torch.set_grad_enabled(not forward_only):
                out = model(**inputs)
            outgoing[("act", mb_id, vs, vs + 1)] = out.detach()
            if not forward_only:
                to_free.append(out)
        else:
            with torch.set_grad_enabled(not forward_only):
                per_token = model(**inputs)
            if forward_only:
                self._stats.append(self.task.eval_stats(per_token, mb))
                out = None
            else:
                loss, stats = self.task.loss(per_token, mb)
                self._total += stats
                out = loss * (loss_scale / num_tokens)
        if not forward_only:
            self._saved[(mb_id, vs)] = (x, out)
            self._live += 1
            self.max_inflight = max(self.max_inflight, self._live)

    def _backward_op(self, vs, mb_id, received, outgoing):
        x, out = self._saved.pop((mb_id, vs))
        self._live -= 1
        if vs == self.nvs - 1:
            out.backward()
        else:
            _backward(out, received.pop(("grad", mb_id, vs + 1, vs)))
        if vs > 0:
            outgoing[("grad", mb_id, vs, vs - 1)] = x.grad
