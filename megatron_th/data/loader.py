"""Deterministic global batches, sliced per data-parallel rank, resumable from consumed_samples.

Global batch k is samples ``[c, c + G)`` of the dataset's global order, where ``c`` is the number
of samples consumed before it. DP rank r of D takes the contiguous slice ``[c + r*G/D,
c + (r+1)*G/D)`` and cuts it into micro-batches, so the union over ranks is the same batch for any
D, and a restart only needs ``consumed_samples``.
"""
from __future__ import annotations

import numpy as np
import torch

from megatron_th.data.packing import make_batch


class PretrainingLoader:
    def __init__(self, dataset, global_batch_size: int, micro_batch_size: int, eod: int,
                 dp_rank: int = 0, dp_size: int = 1, consumed_samples: int = 0,
                 reset_position_ids: bool = False, reset_attention_mask: bool = False,
                 eod_mask_loss: bool = False, collate=None):
        """``collate(samples: list) -> dict``: how a micro-batch is made from dataset items (SFT's
        packed conversations); default: GPT token samples through packing.make_batch."""
        per_rank, rem = divmod(global_batch_size, dp_size)
        if rem or per_rank % micro_batch_size:
            raise ValueError(f"--global-batch-size {global_batch_size} is not divisible by "
                             f"--micro-batch-size {micro_batch_size} x data-parallel size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside data-parallel size {dp_size}")
        self.dataset, self.global_batch_size, self.micro_batch_size = dataset, global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.consumed_samples = dp_rank, dp_size, consumed_samples
        self.num_micro_batches = per_rank // micro_batch_size
        self.collate = collate
        self.pack = dict(eod=eod, reset_position_ids=reset_position_ids,
                         reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss)

    def rank_sample_ids(self, consumed: int) -> range:
        per_rank = self.global_batch_size // self.dp_size
        start = consumed + self.dp_rank * per_rank
        return range(start, start + per_rank)

    def has_next(self) -> bool:
        return self.consumed_samples + self.global_batch_size <= len(self.dataset)

    def source(self, i: int) -> int:
        """Which dataset of a blend sample i comes from (0 for a single dataset)."""
        return self.dataset.source(i) if hasattr(self.dataset, "source") else 0

    def next_global_batch(self) -> list[dict]:
        """This rank's micro-batches of the next global batch; advances consumed_samples by G."""
        if not self.has_next():
            raise StopIteration(f"dataset exhausted at {self.consumed_samples} samples of {len(self.dataset)}")
        ids = self.rank_sample_ids(self.consumed_samples)
        self.consumed_samples += self.global_batch_size
        mbs = self.micro_batch_size
        if self.collate is not None:
            items = [self.dataset[i] for i in ids]
            return [self.collate(items[m * mbs:(m + 1) * mbs]) for m in range(self.num_micro_batches)]
        samples = np.stack([self.dataset[i] for i in ids])
        return [make_batch(samples[m * mbs:(m + 1) * mbs], **self.pack) for m in range(self.num_micro_batches)]

    def __iter__(self):
        while self.has_next():
            yield self.next_global_batch()


class FullPassLoader:
    """Every sample of ``datasets`` exactly once, in order, as global batches sliced per DP rank
    like PretrainingLoader (``--full-validation``). The last global batch is filled up with copies
    of the first sample whose ``loss_mask`` is zeroed, so they count nothing; ``rank_sample_ids``
    gives -1 for them. ``collate(samples: list) -> dict`` makes one micro-batch from samples;
    ``source(i)`` is the index of the dataset sample i comes from (per-source evaluation)."""

    def __init__(self, datasets: list, global_batch_size: int, micro_batch_size: int, collate,
                 dp_rank: int = 0, dp_size: int = 1):
        per_rank, rem = divmod(global_batch_size, dp_size)
        if rem or per_rank % micro_batch_size:
            raise ValueError(f"--global-batch-size {global_batch_size} is not divisible by "
                             f"--micro-batch-size {micro_batch_size} x data-parallel size {dp_size}")
        self.datasets, self.collate = datasets, collate
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.consumed_samples = dp_rank, dp_size, 0
        self.starts = np.cumsum([0] + [len(d) for d in datasets])
        self.total = int(self.starts[-1])
        self.num_batches = -(-self.total // global_batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def source(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right") - 1)

    def rank_sample_ids(self, consumed: int) -> list[int]:
        per_rank = self.global_batch_size // self.dp_size
        start = consumed + self.dp_rank * per_rank
        return [i if i < self.total else -1 for i in range(start, start + per_rank)]

    def has_next(self) -> bool:
        return self.consumed_samples < self.total

    def _sample(self, i: int):
        d = self.source(i)
        return self.datasets[d][i - int(self.starts[d])]

    def next_global_batch(self) -> list[dict]:
        if not self.has_next():
            raise StopIteration(f"full pass done: {self.total} samples")
        ids = self.rank_sample_ids(self.consumed_samples)
        self.consumed_samples += self.global_batch_size
        samples = [self._sample(max(i, 0)) for i in ids]
        mbs, out = self.micro_batch_size, []
        for m in range(len(ids) // mbs):
            mb = self.collate(samples[m * mbs:(m + 1) * mbs])
            pad = torch.tensor([i < 0 for i in ids[m * mbs:(m + 1) * mbs]])
            if pad.any():
                mb["loss_mask"] = mb["loss_mask"].masked_fill(pad.unsqueeze(1), 0)
            out.append(mb)
        return out

    def __iter__(self):
        while self.has_next():
            yield self.next_global_batch()
