"""RNG streams for dropout under tensor parallelism.

- The default generator is seeded identically on every TP and DP rank of a pipeline stage, so
  dropout on replicated activations (the residual stream without sequence parallelism) draws the
  same mask everywhere, as it must for TP ranks to stay in sync.
- ``TPRng`` is a second stream, one per model chunk, seeded per (virtual pipeline stage, TP rank)
  (``tp_seed``); ``fork()`` swaps it in around dropout on sharded activations (attention heads,
  sequence shards), so each shard gets its own mask, and the same one on every DP replica, and
  no two pipeline stages or virtual chunks draw the same masks. Every chunk's stream is part of
  a checkpoint (training/resume.py).
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


def tp_seed(seed: int, virtual_stage: int, tp_rank: int) -> int:
    """Seed of the sharded-dropout stream of virtual pipeline stage ``virtual_stage`` (chunk c on
    PP rank r is ``c * p + r``) on TP rank ``tp_rank``: ``seed + 100 * virtual_stage + 2718 +
    tp_rank``. Without interleaving this is Megatron's model-parallel seed (megatron/training/
    initialize.py adds 100 * pp_rank, core/tensor_parallel/random.py adds 2718 + tp_rank); distinct
    for every (virtual stage, TP rank) while TP < 100, and never one of the default streams'
    ``stage_seed`` values (2718 is not a multiple of 100) while TP < 82."""
    return seed + 100 * virtual_stage + 2718 + tp_rank


class TPRng:
    """A CUDA/CPU generator state kept aside (``state``: the uint8 tensor of get_rng_state) and
    swapped in by ``fork()``. Seeded with ``tp_seed(seed, virtual_stage, tp_rank)``."""

    def __init__(self, seed: int, tp_rank: int, device=torch.device("cpu"), virtual_stage: int = 0):
        self.device = device
        saved = _get(device)
        gen_seed = tp_seed(seed, virtual_stage, tp_rank)
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
