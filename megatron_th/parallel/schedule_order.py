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


def simulate(p: int, m: int, v: int = 1, f_cost: float = 1.0, b_cost: float = 2.0) -> dict:
    """Replay every rank's order; an op starts when its rank is free and its input has arrived
    (forward from the previous virtual stage, backward from the next). Chunk ops cost 1/v of a
    stage op. Returns makespan, busy time per rank, bubble fraction and peak in-flight forwards."""
    f, b = f_cost / v, b_cost / v
    orders = [order(p, r, m, v) for r in range(p)]
    done: dict = {}  # (kind, micro, virtual stage) -> end time
    pos, free = [0] * p, [0.0] * p
    inflight, peak = [0] * p, [0] * p
    nvs = p * v
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(orders[r]):
                kind, k = orders[r][pos[r]]
                c = chunk(k, p, v, kind == "F")
                mb, vs = micro_batch(k, p, v), c * p + r
                if kind == "F":
                    dep = ("F", mb, vs - 1) if vs > 0 else None
                else:
                    dep = ("B", mb, vs + 1) if vs < nvs - 1 else ("F", mb, vs)
                if dep is not None and dep not in done:
                    break
                start = max(free[r], done.get(dep, 0.0))
                free[r] = done[(kind, mb, vs)] = start + (f if kind == "F" else b)
                inflight[r] += 1 if kind == "F" else -1
                peak[r] = max(peak[r], inflight[r])
                pos[r] += 1
                progress = True
    if any(pos[r] < len(orders[r]) for r in range(p)):
        raise ScheduleError("schedule deadlocks")  # never for the orders above; guards edits
    makespan = max(free)
    busy = m * (f_cost + b_cost)
    return {"makespan": makespan, "busy": busy, "bubble": 1 - busy / makespan, "peak_inflight": peak}


def bubble_formula(p: int, m: int, v: int = 1) -> float:
    return (p - 1) / (v * m + p - 1)
