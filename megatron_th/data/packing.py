"""Turn packed samples into model inputs: tokens, labels, loss mask, position ids, cu_seqlens.

A sample of ``seq_length + 1`` tokens gives inputs ``x[:-1]`` and labels ``x[1:]``. Documents are
delimited by EOD (the EOD closes its document). With ``reset_position_ids`` positions restart after
each EOD; with ``reset_attention_mask`` the batch carries ``cu_seqlens`` (THD layout, flattened over
the batch) and attention never crosses a document -- it is never silently ignored; with
``eod_mask_loss`` positions whose input is EOD do not count in the loss.
"""
from __future__ import annotations

import numpy as np
import torch

from megatron_th.data.kernels import packed_metadata


def make_batch(samples: np.ndarray, eod: int, reset_position_ids: bool = False,
               reset_attention_mask: bool = False, eod_mask_loss: bool = False) -> dict:
    samples = np.ascontiguousarray(samples, dtype=np.int64)
    if samples.ndim != 2 or samples.shape[1] < 2:
        raise ValueError(f"samples must be [batch, seq_length + 1], got {samples.shape}")
    tokens = np.ascontiguousarray(samples[:, :-1])
    position_ids, loss_mask, cu_seqlens = packed_metadata(tokens, eod, reset_position_ids, eod_mask_loss)
    batch = {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(np.ascontiguousarray(samples[:, 1:])),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
    }
    if reset_attention_mask:
        batch["cu_seqlens"] = torch.from_numpy(cu_seqlens)
    return batch
