"""Pipeline schedules as pure op orders, and a unit-cost simulator for their bubble.

``order(kind, p, rank, m, v)`` lists what one rank does in one step: ``("F", k)`` / ``("B", k)``
for virtual micro-batch k (``micro_batch(k)``, ``chunk(k)`` say which micro-batch and model chunk).
The executor (pipeline.py) runs exactly this order; the simulator replays all ranks' orders with
fixed op costs to get the makespan and the bubble, which tests compare with the formulas:
1F1B (p-1)/(m+p-1), interleaved with v chunks (p-1)/(v*m+p-1).
"""
from __future__ import annotations


class ScheduleError(ValueError):
    pass


def check(p: int, m: int, v: int) -> None:
    if m < 1:
        raise ScheduleError("need at least one micro-batch per step")
    if v > 1 and (m % p or m < p):
        raise ScheduleError(f"interleaved 1F1B needs the number of micro-batches ({m}) to be a multiple of "
                            f"--pipeline-model-parallel-size ({p}); change --global-batch-size or --micro-batch-size")


def micro_batch(k: int, p: int, v: int) -> int:
    if v == 1:
        return k
    return (k // (p * v)) * p + k % p


def chunk(k: int, p: int, v: int, forward: bool) -> int:
    if v == 1:
        return 0
    c = (k % (p * v)) // p
    return c if forward else v - 1 - c


def warmup(p: int, rank: int, m: int, v: int) -> int:
    total = m * v
    if v == 1:
        return min(p - rank - 1, total)
    return min((p - rank - 1) * 2 + (v - 1) * p, total)


def order(p: int, rank: int, m: int, v: int = 1, forward_only: bool = False) -> list[tuple[str, int]]:
    check(p, m, v)
    total = m * v
    if forward_only:
        return [("F", k) for k in range(total)]
    w = warmup(p, rank, m, v)
    ops = [("F", k) for k in range(w)]
    for i in range(total - w):
        ops += [("F", w + i), ("B", i)]
    ops += [("B", k) for k in range(total - w, total)]
    return ops


def dependency(kind: str, mb: int, vs: int, nvs: int):
    """The (kind, micro-batch, virtual stage) whose output this op consumes, or None."""
    if kind == "F":
        return ("F", mb, vs - 1) if vs > 0 else None
    return ("B", mb, vs + 1) if vs < nvs - 1 else ("F", mb, vs)


def replay(p: int, m: int, v: int = 1, f_cost: float = 1.0, b_cost: float = 2.0, cost=None) -> list[list[dict]]:
    """Every rank's ops of one step with start/end times: an op starts when its rank is free and
    its input has arrived. A chunk op costs 1/v of a stage op, unless ``cost(rank, kind, chunk)``
    gives each op's cost (e.g. measured times)."""
    f, b = f_cost / v, b_cost / v
    cost = cost or (lambda r, kind, c: f if kind == "F" else b)
    orders = [order(p, r, m, v) for r in range(p)]
    done: dict = {}
    pos, free = [0] * p, [0.0] * p
    ops: list[list[dict]] = [[] for _ in range(p)]
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                kind, k = orders[r][pos[r]]
                c = chunk(k, p, v, kind == "F")
                mb, vs = micro_batch(k, p, v), c * p + r
                dep = dependency(kind, mb, vs, p * v)
                if dep is not None and dep not in done:
                    break
                start = max(free[r], done.get(dep, 0.0))
                free[r] = done[(kind, mb, vs)] = start + cost(r, kind, c)
                ops[r].append({"op": kind, "micro_batch": mb, "chunk": c, "start": start, "end": free[r]})
                pos[r] += 1
                progress = True
    if any(pos[r] < len(orders[r]) for r in range(p)):
        raise ScheduleError("schedule deadlocks")  # compute dependencies only; p2p: p2p_plan.py
    return ops


def peak_inflight(ops: list[dict]) -> int:
    live = peak = 0
    for o in ops:
        live += 1 if o["op"] == "F" else -1
        peak = max(peak, live)
    return peak


def simulate(p: int, m: int, v: int = 1, f_cost: float = 1.0, b_cost: float = 2.0) -> dict:
    """Unit-cost replay: makespan, busy time per rank, bubble fraction, peak in-flight forwards."""
    ops = replay(p, m, v, f_cost, b_cost)
    makespan = max(r[-1]["end"] for r in ops)
    busy = m * (f_cost + b_cost)
    return {"makespan": makespan, "busy": busy, "bubble": 1 - busy / makespan,
            "peak_inflight": [peak_inflight(r) for r in ops]}


def bubble_formula(p: int, m: int, v: int = 1) -> float:
    return (p - 1) / (v * m + p - 1)
