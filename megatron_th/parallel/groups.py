"""The rank grid and every process group derived from it.

``grid[pp, dp, tp] = rank``: TP varies fastest (TP ranks share a node), then DP, then PP. Each
group is a line or plane of the grid; all are created once, by every rank, in the same order
(gloo and NCCL hang when ranks create groups in different orders). Nothing else is global.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from megatron_th.config import ConfigError


@dataclass
class ParallelGroups:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    rank: int = 0
    grid: np.ndarray = field(default=None, repr=False)
    tp_group: object = field(default=None, repr=False)
    pp_group: object = field(default=None, repr=False)
    dp_group: object = field(default=None, repr=False)
    mp_group: object = field(default=None, repr=False)     # TP x PP: all model shards of one replica
    embd_group: object = field(default=None, repr=False)   # first + last stage (tied embeddings)
    # pipeline p2p: activations travel to the next stage on one communicator, gradients to the
    # previous stage on another (same ranks as pp_group). NCCL ignores tags and matches a rank
    # pair's messages first-in-first-out per communicator; with PP=2 both neighbours are one rank,
    # so one communicator for both directions could deliver a gradient into an activation buffer.
    pp_fwd_group: object = field(default=None, repr=False)
    pp_bwd_group: object = field(default=None, repr=False)
    world_group: object = field(default=None, repr=False)
    timeout: object = field(default=None, repr=False)      # datetime.timedelta of every group, or None

    @classmethod
    def build(cls, tp: int = 1, pp: int = 1, dp: int | None = None,
              timeout: datetime.timedelta | None = None) -> "ParallelGroups":
        """From the initialized default process group (or a single process without one).
        ``timeout`` (--distributed-timeout-minutes) applies to every group made here: new_group
        does not inherit the default group's, it falls back to the backend's default."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        if dp is None:
            if world % (tp * pp):
                raise ValueError(f"world size {world} is not divisible by --tensor-model-parallel-size {tp} x "
                                 f"--pipeline-model-parallel-size {pp}")
            dp = world // (tp * pp)
        if tp * pp * dp != world:
            raise ValueError(f"world size {world} != TP {tp} x PP {pp} x DP {dp}")
        g = cls(tp, pp, dp, rank, np.arange(world).reshape(pp, dp, tp))
        g.timeout = timeout
        if not dist.is_initialized():
            return g
        g.world_group = dist.group.WORLD
        g.tp_group = g._make([g.grid[p, d, :] for p in range(pp) for d in range(dp)])
        g.dp_group = g._make([g.grid[p, :, t] for p in range(pp) for t in range(tp)])
        g.pp_group = g._make([g.grid[:, d, t] for d in range(dp) for t in range(tp)])
        if pp > 1:
            g.pp_fwd_group = g._make([g.grid[:, d, t] for d in range(dp) for t in range(tp)])
            g.pp_bwd_group = g._make([g.grid[:, d, t] for d in range(dp) for t in range(tp)])
        g.mp_group = g._make([g.grid[:, d, :].ravel() for d in range(dp)])
        ends = sorted({0, pp - 1})
        g.embd_group = g._make([g.grid[ends, d, t] for d in range(dp) for t in range(tp)])
        return g

    def _make(self, rank_lists):
        mine = None
        for ranks in rank_lists:
            ranks = sorted(int(r) for r in np.ravel(ranks))
            # every rank calls new_group for every group, in the same order
            grp = dist.new_group(ranks, timeout=self.timeout)
            if self.rank in ranks:
                mine = grp
        return mine

    # -- where am I --------------------------------------------------------------------------
    @property
    def coords(self) -> tuple[int, int, int]:
        p, d, t = np.argwhere(self.grid == self.rank)[0]
        return int(p), int(d), int(t)

    @property
    def pp_rank(self) -> int:
        return self.coords[0]

    @property
    def dp_rank(self) -> int:
        return self.coords[1]

    @property
    def tp_rank(self) -> int:
        return self.coords[2]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def stage_rank(self, pp_rank: int) -> int:
        """Global rank of the same (dp, tp) position on another pipeline stage."""
        _, d, t = self.coords
        return int(self.grid[pp_rank % self.pp, d, t])

    @property
    def next_rank(self) -> int:
        return self.stage_rank(self.pp_rank + 1)

    @property
    def prev_rank(self) -> int:
        return self.stage_rank(self.pp_rank - 1)


BACKEND_ENV = "MEGATRON_TH_DISTRIBUTED_BACKEND"  # default for --distributed-backend (the test suite sets gloo)


def choose_device(backend: str | None, local_rank: int, device_count: int,
                  visible: str | None = None) -> tuple[str, torch.device]:
    """(backend, device) of one rank; a pure function of its arguments.

    backend: "gloo" | "nccl" | another torch.distributed backend | None (None: "nccl" when
    ``device_count`` > 0, else "gloo"). Only NCCL puts this rank's tensors on a GPU, device
    ``cuda:<local_rank>`` (torchrun's LOCAL_RANK, one process per GPU); gloo (and any other
    backend) means CPU tensors even when GPUs are present, so a gloo run never touches a GPU.
    ``visible`` (the CUDA_VISIBLE_DEVICES value) only makes the error messages precise.

    Raises ConfigError for NCCL without a visible GPU, or when ``local_rank`` is not below
    ``device_count`` (more processes per node than visible GPUs), naming LOCAL_RANK and
    CUDA_VISIBLE_DEVICES instead of CUDA's later "invalid device ordinal".
    """
    if backend is None:
        backend = "nccl" if device_count > 0 else "gloo"
    if "nccl" not in backend:
        return backend, torch.device("cpu")
    shown = "unset" if visible is None else repr(visible)
    if device_count <= 0:
        raise ConfigError(f"--distributed-backend {backend} needs a CUDA GPU, but none is visible "
                          f"(CUDA_VISIBLE_DEVICES {shown}); use --distributed-backend gloo to run on CPU")
    if not 0 <= local_rank < device_count:
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: {device_count} visible on this node "
                          f"(CUDA_VISIBLE_DEVICES {shown}); start at most {device_count} processes per node "
                          f"(torchrun --nproc-per-node) or make more GPUs visible")
    return backend, torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    """A non-negative integer from torchrun's environment; ConfigError naming the variable."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={raw!r} in the environment is not a non-negative integer (set by torchrun; "
                          f"check the launcher)")
    return value


def init_distributed(backend: str | None = None, timeout_minutes: float = 10) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
    no process group for a single process. Returns (rank, world size, device).

    The backend is, in order: an already initialised default group's (a launcher or test harness
    made it), ``backend`` (--distributed-backend), $MEGATRON_TH_DISTRIBUTED_BACKEND, else NCCL when
    GPUs are visible and gloo otherwise; the device follows it (``choose_device``). On CUDA the
    group is created with ``device_id`` (eager NCCL communicator init, bound to this GPU; see
    torch.distributed.init_process_group) and every group gets ``timeout_minutes``
    (--distributed-timeout-minutes: how long a collective may wait before NCCL's watchdog aborts).
    Raises ConfigError for a bad backend/GPU combination or a non-positive timeout.
    """
    if timeout_minutes is None or timeout_minutes <= 0:
        raise ConfigError(f"--distributed-timeout-minutes must be positive, got {timeout_minutes}")
    world, rank, local = (_env_int(k, d) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    if dist.is_initialized():
        active = dist.get_backend()
        if backend and backend != active:
            raise ConfigError(f"--distributed-backend {backend}, but the process group was already "
                              f"initialised with {active}")
        backend = active
    else:
        backend = backend or os.environ.get(BACKEND_ENV) or None
    count = torch.cuda.device_count() if backend is None or "nccl" in backend else 0
    backend, device = choose_device(backend, local, count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return rank, world, device


def shutdown_distributed(clean: bool = True) -> None:
    """Tear down the default process group and every group made from it (no-op without one).

    ``clean``: every rank reached this point together (normal exit, or an error every rank raises
    alike, such as a ConfigError): ``destroy_process_group`` flushes and frees the communicators
    (PyTorch asks for it before exit; its NCCL teardown is collective). Otherwise (an unexpected
    error on this rank while peers may sit in a collective) an NCCL group is aborted instead
    (torch's ``_abort_process_group``, meant for bailing out; pytorch/pytorch#132291), which does
    not wait for peers; other backends are destroyed.
    """
    if not dist.is_initialized():
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if not clean and abort is not None and "nccl" in str(dist.get_backend()):
        abort()
    else:
        dist.destroy_process_group()
