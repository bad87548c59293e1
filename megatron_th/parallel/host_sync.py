"""Host-side coordination of ranks: one CPU (gloo) group, small JSON broadcasts, one rank does the work.

Cluster filesystems are the reason this exists (docs/data.md, docs/checkpoint.md): Lustre may lack
``flock``, NFS locks are per node, a cache may be node-local. So no file locks: one rank decides or
builds and tells the others over a process group, and every rank checks what it can see.

All collectives here run on a gloo group of every rank, created with its own timeout, so that
they work under NCCL without a device (PyTorch: ``torch.distributed.new_group(backend="gloo")``,
as Megatron-LM's ``get_data_parallel_group_gloo``) and so that waiting for one rank's long host
work (building dataset indices, scanning a checkpoint) is not cut short by NCCL's watchdog.
Objects travel as JSON bytes in uint8 tensors, never pickled.

With no process group (tools, tests, a single process) every function works locally: ``group``
is None, broadcasts return their input, gathers return ``[obj]``.
"""
from __future__ import annotations

import datetime
import json
import os

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 10   # Megatron-LM's --distributed-timeout-minutes default
MIN_HOST_WAIT_MINUTES = 60     # floor for waits on one rank's host work (index builds)

_GROUPS: dict = {}  # minutes -> (default group it was made under, gloo group)


def distributed() -> bool:
    """True when torch.distributed is initialized with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def host_timeout_minutes(minutes: float | None = None) -> float:
    """max(--distributed-timeout-minutes (default 10), 60): the timeout of the host group."""
    return max(float(minutes if minutes is not None else DEFAULT_TIMEOUT_MINUTES), float(MIN_HOST_WAIT_MINUTES))


def host_group(minutes: float | None = None):
    """The gloo group of all ranks with timeout ``host_timeout_minutes(minutes)``, or None without
    torch.distributed (or with one rank). Collective on first use for a given timeout: every rank
    must call it at the same point (as every ``new_group``). Cached per default group, so a process
    that re-initializes torch.distributed gets a fresh group."""
    if not distributed():
        return None
    timeout = host_timeout_minutes(minutes)
    world_pg = dist.group.WORLD
    cached = _GROUPS.get(timeout)
    if cached is None or cached[0] is not world_pg:
        grp = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout))
        _GROUPS[timeout] = cached = (world_pg, grp)
    return cached[1]


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; 0 when unset)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(f"LOCAL_RANK={os.environ['LOCAL_RANK']!r}: expected an integer") from None


def broadcast_json(obj, group=None, src: int = 0):
    """``obj`` (JSON-serializable) of global rank ``src`` on every rank of ``group``. Every rank gets
    the JSON round-trip (lists for tuples, str keys), rank ``src`` included. Two broadcasts: the
    length (int64), then the bytes (uint8)."""
    if group is None:
        return obj
    me = dist.get_rank()
    data = json.dumps(obj).encode() if me == src else b""
    n = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(n, src, group=group)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if me == src else torch.empty(int(n), dtype=torch.uint8)
    dist.broadcast(buf, src, group=group)
    return json.loads(buf.numpy().tobytes())


def all_gather_json(obj, group=None) -> list:
    """[obj of rank 0, obj of rank 1, ...] (group ranks, which are global ranks for host_group())."""
    if group is None:
        return [json.loads(json.dumps(obj))]
    world = dist.get_world_size(group)
    data = json.dumps(obj).encode()
    n = torch.tensor([len(data)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    longest = max(int(s) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # JSON is never empty
    parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(parts, buf, group=group)
    return [json.loads(p[:int(s)].numpy().tobytes()) for p, s in zip(parts, sizes)]


# -- errors that cross ranks ------------------------------------------------------------------------

def _error_record(e: BaseException, shared: tuple) -> dict:
    kind = next((i for i, cls in enumerate(shared) if isinstance(e, cls)), None)
    return {"msg": str(e) if kind is not None else f"{type(e).__name__}: {e}", "kind": kind}


def _raise_remote(rec: dict, src: int, shared: tuple):
    """Re-raise another rank's error here: the same class and message for the ``shared`` classes
    (one-line errors the CLI prints), else a RuntimeError naming the rank."""
    if rec["kind"] is not None:
        raise shared[rec["kind"]](rec["msg"])
    raise RuntimeError(f"rank {src} failed: {rec['msg']}")


def raise_if_any(error: BaseException | None, group=None, shared: tuple = ()) -> None:
    """Collective: if any rank passes an error, every rank raises (its own error if it has one, else
    that of the lowest failing rank). Also a barrier."""
    recs = all_gather_json(_error_record(error, shared) if error is not None else None, group)
    if error is not None:
        raise error
    for r, rec in enumerate(recs):
        if rec is not None:
            _raise_remote(rec, r, shared)


def run_on_rank0(fn, group=None, shared: tuple = ()):
    """``fn()`` on rank 0 only; its JSON-serializable result is broadcast and returned on every rank.
    If it raises, every rank raises too (rank 0 its original exception; the others the same class
    and message if it is one of ``shared``, else RuntimeError), so no rank is left waiting."""
    if group is None:
        return fn()
    out, err = None, None
    if dist.get_rank() == 0:
        try:
            out = {"ok": fn()}
        except Exception as e:  # noqa: BLE001 - forwarded to every rank below
            err, out = e, {"error": _error_record(e, shared)}
    out = broadcast_json(out, group)
    if err is not None:
        raise err
    if "error" in out:
        _raise_remote(out["error"], 0, shared)
    return out["ok"]


def ranks_failing(ok: bool, group=None) -> list[int]:
    """Collective: the ranks whose ``ok`` is False (every rank gets the same list)."""
    return [r for r, v in enumerate(all_gather_json(bool(ok), group)) if not v]


def one_rank_builds(plan, exists, build, group=None, shared: tuple = (), missing=None):
    """The one-rank-builds pattern for files every rank then reads (Megatron-LM's
    megatron/core/datasets/blended_megatron_dataset_builder.py ``build_generic_dataset``: rank 0
    builds, barrier, then the other ranks load; no file locks), plus the node-local fallback.

    1. rank 0: ``info = plan()`` (e.g. a cache key: only rank 0 pays for it); if not
       ``exists(info)``, ``build(info)``; ``info`` is broadcast (the others wait here);
    2. every rank checks ``exists(info)``; if all see the files, done;
    3. else (node-local storage) local rank 0 of each node (``LOCAL_RANK`` 0) that cannot see
       them builds them, then a second barrier;
    4. a rank that still cannot see them raises ``missing(info, ranks)`` on every rank
       (default FileNotFoundError).

    Errors of ``plan``/``build`` reach every rank (see ``run_on_rank0``). Returns ``info``.
    ``build`` must write atomically (temporary name + rename): two nodes may build at once on a
    filesystem whose metadata caching made one of them miss the other's files.
    """
    def first():
        info = plan()
        if not exists(info):
            build(info)
        return info

    info = run_on_rank0(first, group, shared)
    if group is None or not ranks_failing(exists(info), group):
        return info
    err = None
    if local_rank() == 0 and not exists(info):
        try:
            build(info)
        except Exception as e:  # noqa: BLE001 - forwarded to every rank
            err = e
    raise_if_any(err, group, shared)  # the second barrier
    bad = ranks_failing(exists(info), group)
    if bad:
        raise (missing(info, bad) if missing else FileNotFoundError(f"ranks {bad} cannot see {info}"))
    return info
