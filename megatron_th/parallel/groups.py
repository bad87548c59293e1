"""The rank grid and every process group derived from it.

``grid[pp, dp, tp] = rank``: TP varies fastest (TP ranks share a node), then DP, then PP. Each
group is a line or plane of the grid; all are created once, by every rank, in the same order
(gloo and NCCL hang when ranks create groups in different orders). Nothing else is global.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


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
    world_group: object = field(default=None, repr=False)

    @classmethod
    def build(cls, tp: int = 1, pp: int = 1, dp: int | None = None) -> "ParallelGroups":
        """From the initialized default process group (or a single process without one)."""
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
        if not dist.is_initialized():
            return g
        g.world_group = dist.group.WORLD
        g.tp_group = g._make([g.grid[p, d, :] for p in range(pp) for d in range(dp)])
        g.dp_group = g._make([g.grid[p, :, t] for p in range(pp) for t in range(tp)])
        g.pp_group = g._make([g.grid[:, d, t] for d in range(dp) for t in range(tp)])
        g.mp_group = g._make([g.grid[:, d, :].ravel() for d in range(dp)])
        ends = sorted({0, pp - 1})
        g.embd_group = g._make([g.grid[ends, d, t] for d in range(dp) for t in range(tp)])
        return g

    def _make(self, rank_lists):
        mine = None
        for ranks in rank_lists:
            ranks = sorted(int(r) for r in np.ravel(ranks))
            grp = dist.new_group(ranks)  # every rank calls new_group for every group, same order
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


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed from torchrun's environment (a no-op for one process).

    Returns (rank, world size, device): CUDA device ``LOCAL_RANK`` with NCCL when GPUs are present,
    else CPU with gloo. The same code runs on both."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world)
    return rank, world, device
