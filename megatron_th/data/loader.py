"""Deterministic global batches, sliced per data-parallel rank, resumable from consumed_samples.

Global batch k is samples ``[c, c + G)`` of the dataset's global order, where ``c`` is the number
of samples consumed before it. DP rank r of D takes the contiguous slice ``[c + r*G/D,
c + (r+1)*G/D)`` and cuts it into micro-batches, so the union over ranks is the same batch for any
D, and a restart only needs ``consumed_samples``.
"""
from __future__ import annotations

import numpy as np

from megatron_th.data.packing import make_batch


class PretrainingLoader:
    def __init__(self, dataset, global_batch_size: int, micro_batch_size: int, eod: int,
                 dp_rank: int = 0, dp_size: int = 1, consumed_samples: int = 0,
                 reset_position_ids: bool = False, reset_attention_mask: bool = False,
                 eod_mask_loss: bool = False):
        per_rank, rem = divmod(global_batch_size, dp_size)
        if rem or per_rank % micro_batch_size:
            raise ValueError(f"--global-batch-size {global_batch_size} is not divisible by "
                             f"--micro-batch-size {micro_batch_size} x data-parallel size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside data-parallel size {dp_size}")
        self.dataset, self.global_batch_size, self.micro_batch_size = dataset, global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.consumed_samples = dp_rank, dp_size, consumed_samples
        self.num_micro_batches = per_rank // micro_batch_size
        self.pack = dict(eod=eod, reset_position_ids=reset_position_ids,
                         reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss)

    def rank_sample_ids(self, consumed: int) -> range:
        per_rank = self.global_batch_size // self.dp_size
        start = consumed + self.dp_rank * per_rank
        return range(start, start + per_rank)

    def has_next(self) -> bool:
        return self.consumed_samples + self.global_batch_size <= len(self.dataset)

    def next_global_batch(self) -> list[dict]:
        """This rank's micro-batches of the next global batch; advances consumed_samples by G."""
        if not self.has_next():
            raise StopIteration(f"dataset exhausted at {self.consumed_samples} samples of {len(self.dataset)}")
        ids = self.rank_sample_ids(self.consumed_samples)
        samples = np.stack([self.dataset[i] for i in ids])
        self.consumed_samples += self.global_batch_size
        mbs = self.micro_batch_size
        return [make_batch(samples[m * mbs:(m + 1) * mbs], **self.pack) for m in range(self.num_micro_batches)]

    def __iter__(self):
        while self.has_next():
            yield self.next_global_batch()
