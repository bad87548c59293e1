"""Run a test body on N spawned ranks (gloo on CPU) and fail with the failing rank's traceback.

``run(fn, world, *args, timeout=...)`` spawns ``world`` processes (spawn, not fork), each
initializing torch.distributed on a free port and calling ``fn(rank, world, *args)``; it returns
the per-rank results. gloo hangs rather than errors when ranks disagree, so every run has a
timeout; a rank that does not finish dumps its Python stack (faulthandler) and the error names it.
Start a layout's processes once and run several checks inside ``fn``: each rank pays ~1.5 s to
import torch.
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn, rank, world, port, args, queue, timeout, stack_file):
    sys.path.insert(0, ROOT)
    with open(stack_file, "w") as fh:
        faulthandler.dump_traceback_later(timeout, exit=False, file=fh)
        try:
            import torch
            import torch.distributed as dist

            torch.set_num_threads(1)
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                              WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
            dist.init_process_group("gloo", rank=rank, world_size=world)
            result = fn(rank, world, *args)
            dist.barrier()
            dist.destroy_process_group()
            queue.put((rank, "ok", result))
        except BaseException:  # report, never hang the parent
            queue.put((rank, "error", traceback.format_exc()))
        finally:
            faulthandler.cancel_dump_traceback_later()


def run(fn, world: int, *args, timeout: float = 180.0):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="dist_")
    stacks = [os.path.join(tmp, f"rank{r}.stack") for r in range(world)]
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, args, queue, timeout, stacks[r]), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    import queue as q

    try:
        while len(results) + len(errors) < world:
            try:
                rank, status, payload = queue.get(timeout=timeout + 5)
            except q.Empty:
                hung = [r for r in range(world) if r not in results and r not in errors]
                dumps = "".join(f"\n--- rank {r} stack ---\n{open(stacks[r]).read()}" for r in hung
                                if os.path.exists(stacks[r]))
                raise TimeoutError(f"ranks {hung} of {world} did not finish within {timeout:.0f}s "
                                   f"(a collective mismatch hangs gloo){dumps}") from None
            if status == "ok":
                results[rank] = payload
            else:
                errors[rank] = payload
                break  # the other ranks are likely stuck in a collective now
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
    if errors:
        rank, tb = next(iter(sorted(errors.items())))
        raise AssertionError(f"rank {rank} of {world} failed:\n{tb}")
    return [results[r] for r in range(world)]
