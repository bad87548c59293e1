"""The process side of gpu_check: runs the plan's tasks in order and reports through an events file.

Started by gpu_check.py as ``gpu_check.py --worker single|dist --plan PLAN.json`` (``dist``: under
torch.distributed.run, one process per rank). Events are JSON lines appended to the plan's
``events`` file, one ``os.write`` each (O_APPEND: lines of several ranks never interleave):

    {"ev": "begin", "task": t, "steps": [step, ...]}       rank 0: a task starts; the results it will give
    {"ev": "end", "task": t}                                rank 0
    {"ev": "result", "task": t, "step": ..., "status": ..., "value": ..., "unit": ..., "detail": ..., "seconds": ...}
    {"ev": "error", "task": t, "rank": r, "error": "..."}   any rank whose task raised

A task that raises ends this process (exit code 3) after its error event: its peers may be inside a
collective, so the parent kills the launch and starts a new one for the remaining tasks. Before a
task's timeout runs out, faulthandler writes every thread's stack to the log (where a hang is).
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import os
import sys
import time
import traceback

from gpu_check_steps import by_name
from gpu_check_steps.common import Context, Result


class Events:
    def __init__(self, path: str, rank: int):
        self.rank = rank
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, everyone: bool = False, **event) -> None:
        if self.rank == 0 or everyone:
            os.write(self.fd, (json.dumps(event) + "\n").encode())


def _function(task):
    module, fn = task.target.split(":")
    return getattr(importlib.import_module(f"gpu_check_steps.{module}"), fn)


def _inject(ctx: Context, task: str, result: Result | None = None):
    """--inject hang:TASK sleeps (the timeout path); --inject fail:STEP turns that result into a FAIL."""
    if result is None:
        if task in ctx.inject.get("hang", []):
            print(f"gpu_check: --inject hang:{task}: sleeping", flush=True)
            while True:
                time.sleep(1)
        return None
    if result.step in ctx.inject.get("fail", []):
        result.status, result.detail = "FAIL", f"injected by --inject fail:{result.step}; " + result.detail
    return result


def main(role: str, plan_path: str) -> int:
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    rank = int(os.environ.get("RANK", "0")) if role == "dist" else 0
    world = int(os.environ.get("WORLD_SIZE", "1")) if role == "dist" else 1
    ctx = Context(plan["mode"], plan["workdir"], world, rank, plan.get("inject", {}), nproc=plan.get("nproc"))
    events = Events(plan["events"], rank)
    tasks = [by_name()[name] for name in plan["tasks"]]
    fns = {t.name: _function(t) for t in tasks}
    for t in tasks:
        timeout = plan["timeouts"][t.name]
        names = getattr(fns[t.name], "names", None)
        events.write(ev="begin", task=t.name, steps=names(ctx) if names else [t.name])
        print(f"gpu_check: task {t.name} (timeout {timeout:.0f} s)", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        faulthandler.dump_traceback_later(max(timeout - 5.0, 0.5 * timeout), exit=False, file=sys.stderr)
        try:
            _inject(ctx, t.name)
            start = time.perf_counter()
            for res in fns[t.name](ctx):
                now = time.perf_counter()
                res.seconds, start = round(now - start, 2), now
                events.write(ev="result", task=t.name, **_inject(ctx, t.name, res).to_dict())
        except BaseException as e:  # noqa: BLE001 (report, then leave: peers may be stuck in a collective)
            faulthandler.cancel_dump_traceback_later()
            traceback.print_exc()
            sys.stderr.flush()
            sys.stdout.flush()
            events.write(everyone=True, ev="error", task=t.name, rank=rank, error=f"{type(e).__name__}: {e}"[:500])
            os._exit(3)
        faulthandler.cancel_dump_traceback_later()
        events.write(ev="end", task=t.name)
        print(f"gpu_check: task {t.name} done in {time.perf_counter() - t0:.1f} s "
              f"({time.process_time() - c0:.1f} s CPU)", flush=True)
    if role == "dist":
        _shutdown()
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    try:
        from megatron_th.parallel.groups import shutdown_distributed
    except ImportError:
        shutdown_distributed = None
    if shutdown_distributed is not None:
        shutdown_distributed(True)
    elif dist.is_initialized():
        dist.destroy_process_group()
