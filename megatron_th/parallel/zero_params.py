"""Zero-1 by whole parameters, for optimizers whose update needs a whole (logical) tensor.

Adafactor's row/column statistics and Muon's orthogonalisation read a whole matrix, so the flat
bucket ranges of parallel/zero.py (which cut parameters anywhere) do not fit them. Under
``--use-distributed-optimizer`` these optimizers instead give each parameter to exactly one DP
rank, balanced by size (``assign_owners``): only the owner keeps its fp32 master, optimizer state
and EMA, and updates it. Gradients are all-reduced over DP (every rank has every gradient; the
reduce-scatter of flat Zero-1 would leave parameters split across owners), and after the step
every owner's updated parameters are all-gathered in one collective (``gather_params``). The
bytes moved per step are those of an all-reduce of the gradients plus an all-gather of the
parameters, where flat Zero-1 moves a reduce-scatter plus an all-gather.
"""
from __future__ import annotations

import torch

from megatron_th.parallel import comm


def assign_owners(numels: list[int], dp: int) -> list[int]:
    """The DP rank owning each parameter: largest first, each to the least-loaded rank (ties: the
    lower rank; equal sizes: model order), so every rank holds about 1/dp of the elements and the
    assignment is a pure function of the sizes (the estimator calls it too)."""
    load = [0] * dp
    owner = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        r = min(range(dp), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += numels[i]
    return owner


class WholeParamShards:
    """Which of ``params`` this DP rank owns, and the all-gather of the owners' updated values.

    ``params``: this rank's parameters (local TP shapes, equal on every DP rank and, in size, on
    every TP rank, so TP peers own the same parameters). ``groups``: ParallelGroups (dp,
    dp_rank, dp_group)."""

    def __init__(self, params: list, groups):
        self.params, self.dp, self.dp_rank, self.group = params, groups.dp, groups.dp_rank, groups.dp_group
        self.owner = assign_owners([p.numel() for p in params], self.dp)
        self.by_rank = [[i for i, o in enumerate(self.owner) if o == r] for r in range(self.dp)]
        self.width = max((sum(params[i].numel() for i in idx) for idx in self.by_rank), default=0)

    @property
    def owned(self) -> list[int]:
        """Indices (into ``params``) of the parameters this DP rank updates, in model order."""
        return self.by_rank[self.dp_rank]

    @torch.no_grad()
    def gather_params(self) -> None:
        """After the owners' step: every DP rank's owned parameters -> all DP ranks (one
        all-gather of ``dp x width`` elements in the parameters' dtype, zero-padded)."""
        if self.dp == 1 or not self.params:
            return
        p0 = self.params[0]
        part = torch.zeros(self.width, dtype=p0.dtype, device=p0.device)
        off = 0
        for i in self.owned:
            n = self.params[i].numel()
            part[off:off + n].copy_(self.params[i].detach().reshape(-1))
            off += n
        full = torch.empty(self.dp * self.width, dtype=p0.dtype, device=p0.device)
        comm.all_gather_into(full, part, self.group)
        for r, idx in enumerate(self.by_rank):
            if r == self.dp_rank:
                continue
            off = r * self.width
            for i in idx:
                p = self.params[i]
                p.data.copy_(full[off:off + p.numel()].view_as(p))
                off += p.numel()
