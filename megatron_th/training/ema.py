"""Exponential moving average of the weights (``--ema-decay``, ``--ema-start-iter``, ``--eval-ema``).

One fp32 tensor per optimizer slot (training/optimizer.py Slot), the EMA of that slot's fp32
master: the whole parameter, or under Zero-1 exactly the part of it this DP rank owns, so the EMA
is sharded like the masters and costs 4 B/param (÷ DP under Zero-1) and no communication. After
every applied optimizer step t (t = 1, 2, ...):

    E <- W                                 while t < --ema-start-iter (or beta = 0)
    E <- beta * E + (1 - beta) * W         afterwards (torch.lerp(E, W, 1 - beta))

with W the updated master; E starts as the initial weights. Checkpoints hold it as
``optim.ema.<name>`` (fp32, logical shape), written and resharded like the other optimizer state.
"""
from __future__ import annotations

import torch


class WeightEMA:
    """The EMA tensors (``tensors``: fp32, one per slot, the slot master's shape and device)."""

    def __init__(self, masters: list, decay: float, start_iter: int = 0):
        """``masters``: the optimizer slots' fp32 masters (any device); ``decay``: beta in [0, 1)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema-decay {decay} must be in [0, 1)")
        self.decay, self.start_iter = float(decay), int(start_iter)
        self.tensors = [m.detach().to(torch.float32, copy=True) for m in masters]

    @torch.no_grad()
    def update(self, masters: list, steps: int) -> None:
        """After the optimizer applied its ``steps``-th update to ``masters``."""
        if not self.tensors:
            return
        current = [m.detach() for m in masters]
        if steps < self.start_iter or self.decay == 0.0:
            torch._foreach_copy_(self.tensors, current)
        else:
            torch._foreach_lerp_(self.tensors, current, 1.0 - self.decay)

    def storages(self) -> list:
        return list(self.tensors)
