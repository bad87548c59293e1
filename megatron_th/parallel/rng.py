"""RNG streams for dropout under tensor parallelism.

- The default generator is seeded identically on every TP and DP rank of a pipeline stage, so
  dropout on replicated activations (the residual stream without sequence parallelism) draws the
  same mask everywhere, as it must for TP ranks to stay in sync.
- ``TPRng`` is a second stream seeded per TP rank (``seed + 2718 + tp_rank``); ``fork()`` swaps
  it in around dropout on sharded activations (attention heads, sequence shards), so each shard
  gets its own mask, and the same one on every DP replica.
"""
from __future__ import annotations

import contextlib

import torch


def _get(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set(state, device):
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class TPRng:
    def __init__(self, seed: int, tp_rank: int, device=torch.device("cpu")):
        self.device = device
        saved = _get(device)
        gen_seed = seed + 2718 + tp_rank
        if device.type == "cuda":
            torch.cuda.manual_seed(gen_seed)
        else:
            torch.manual_seed(gen_seed)
        self.state = _get(device)
        _set(saved, device)

    @contextlib.contextmanager
    def fork(self):
        saved = _get(self.device)
        _set(self.state, self.device)
        try:
            yield
        finally:
            self.state = _get(self.device)
            _set(saved, self.device)


def stage_seed(seed: int, pp_rank: int) -> int:
    """Seed of the default generator on a pipeline stage (different layers, different masks)."""
    return seed + 100 * pp_rank
