"""Which activations and gradients a pipeline rank sends and receives, and when: a pure function.

The executor (pipeline.py) groups a rank's schedule order (schedule_order.order) into *steps* and
makes one *exchange* before each step (and one after the last): the sends of the step just run
plus the receives the next step needs, issued together and waited at once. As in Megatron-LM's
``schedules.py`` / ``p2p_communication.py``:

- 1F1B (v = 1): every op is a step, so the exchange after a forward sends its output and receives
  the gradient of the backward that follows (``send_forward_recv_backward``), and the exchange
  after a backward sends its input gradient and receives the next forward's input
  (``send_backward_recv_forward``);
- interleaved 1F1B (v > 1): warm-up forwards and cool-down backwards are steps of one op, and a
  steady-state forward with the backward after it form one step, whose exchange sends both
  outputs and receives both inputs (``send_forward_backward_recv_forward_backward``).

The other combinations fail one way or the other (tests/test_pipeline_p2p_nccl.py shows both):
an exchange per op deadlocks interleaved 1F1B under NCCL's rendezvous sends, and pairing
forward and backward in 1F1B serialises the stages (the exchange after the pair waits for the
neighbour's whole pair), taking about twice the ideal time. ``exchanges`` is what the executor
runs and what the NCCL model test replays.

A message is ``(kind, micro_batch, src_vs, dst_vs)``: kind "act" travels to virtual stage
src_vs + 1 on the activation communicator, "grad" to src_vs - 1 on the gradient communicator.
"""
from __future__ import annotations

from megatron_th.parallel.schedule_order import chunk, micro_batch, order, warmup


def steps(p: int, rank: int, m: int, v: int = 1, forward_only: bool = False) -> list[list[tuple[str, int]]]:
    """This rank's schedule order cut into steps (see the module docstring): one op per step for
    1F1B and evaluation, [[("F", k)], ..., [("F", k), ("B", k')], ..., [("B", k)]] interleaved."""
    ops = order(p, rank, m, v, forward_only)
    if v == 1 or forward_only:
        return [[op] for op in ops]
    w = warmup(p, rank, m, v)
    out = [[op] for op in ops[:w]]
    steady = m * v - w
    out += [ops[w + 2 * i: w + 2 * i + 2] for i in range(steady)]
    out += [[op] for op in ops[w + 2 * steady:]]
    return out


def op_stage(p: int, rank: int, v: int, kind: str, k: int) -> tuple[int, int]:
    """(micro-batch, virtual stage) of op (kind, k) on ``rank``."""
    return micro_batch(k, p, v), chunk(k, p, v, kind == "F") * p + rank


def needs(p: int, v: int, kind: str, mb: int, vs: int) -> tuple | None:
    """The message op (kind, mb, vs) receives before it runs, or None."""
    if kind == "F" and vs > 0:
        return ("act", mb, vs - 1, vs)
    if kind == "B" and vs < p * v - 1:
        return ("grad", mb, vs + 1, vs)
    return None


def sends(p: int, v: int, kind: str, mb: int, vs: int, forward_only: bool = False) -> tuple | None:
    """The message op (kind, mb, vs) sends after it ran, or None."""
    if kind == "F" and vs < p * v - 1:
        return ("act", mb, vs, vs + 1)
    if kind == "B" and vs > 0:
        return ("grad", mb, vs, vs - 1)
    return None


def exchanges(p: int, rank: int, m: int, v: int = 1, forward_only: bool = False) -> list[dict]:
    """One entry per step plus a final one: ``{"send": [message], "recv": [message]}``, where
    entry i is made before step i (the last entry after the last step). Empty entries are kept
    so that entry i always precedes step i."""
    out, pending = [], []
    for step in steps(p, rank, m, v, forward_only):
        recv = []
        for kind, k in step:
            msg = needs(p, v, kind, *op_stage(p, rank, v, kind, k))
            if msg is not None:
                recv.append(msg)
        out.append({"send": pending, "recv": recv})
        pending = [s for kind, k in step if (s := sends(p, v, kind, *op_stage(p, rank, v, kind, k))) is not None]
    out.append({"send": pending, "recv": []})
    return out
