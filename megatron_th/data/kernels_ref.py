"""Plain numpy references for the C++ kernels in csrc/ (tests prove the two identical).

Written from the definitions, not from the C++ loops: the sample index from the token stream
and a searchsorted, blending by evaluating the greedy rule literally, packing row by row.
"""
from __future__ import annotations

import numpy as np


def build_sample_idx(sizes, doc_idx, seq_length: int, num_samples: int) -> np.ndarray:
    """Row i = (position p in doc_idx, offset o) of the document holding stream token i*seq_length,
    where the stream is documents doc_idx[0], doc_idx[1], ... back to back (empty documents hold
    no token). Sample i is stream tokens [i*seq_length, (i+1)*seq_length], so row i+1, the first
    token of sample i+1, is also the last token of sample i."""
    sizes = np.asarray(sizes, dtype=np.int64)
    doc_idx = np.asarray(doc_idx, dtype=np.int64)
    if seq_length <= 0 or num_samples < 0:
        raise ValueError(f"seq_length must be positive and num_samples >= 0 (got {seq_length}, {num_samples})")
    lengths = sizes[doc_idx]
    ends = np.cumsum(lengths)  # stream position one past each document
    need = num_samples * seq_length + 1
    have = int(ends[-1]) if len(ends) else 0
    if have < need:
        raise ValueError(f"not enough tokens: {num_samples} samples of {seq_length} need {need}, documents hold {have}")
    t = np.arange(num_samples + 1, dtype=np.int64) * seq_length  # stream index of each sample start
    p = np.searchsorted(ends, t, side="right")                    # first document whose end > t
    starts = ends - lengths
    out = np.stack([p, t - starts[p]], axis=1)
    return out.astype(np.int64)


def build_blending_indices(weights, size: int):
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or len(w) > 32767 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("blending weights must be 1..32767 finite, non-negative numbers with a positive sum")
    w = w / w.sum()
    taken = np.zeros(len(w), dtype=np.int64)
    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    for i in range(size):
        d = int(np.argmax(w * max(i, 1) - taken))
        dataset_index[i], sample_index[i] = d, taken[d]
        taken[d] += 1
    return dataset_index, sample_index


def packed_metadata(tokens, eod: int, reset_position_ids: bool, eod_mask_loss: bool):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty [batch, seq] array, got shape {tokens.shape}")
    b, s = tokens.shape
    position_ids = np.tile(np.arange(s, dtype=np.int64), (b, 1))
    loss_mask = np.ones((b, s), dtype=np.float32)
    if eod_mask_loss:
        loss_mask[tokens == eod] = 0.0
    cu = [0]
    for r in range(b):
        for j in np.flatnonzero(tokens[r] == eod):
            if j + 1 < s:
                cu.append(r * s + j + 1)
                if reset_position_ids:
                    position_ids[r, j + 1:] -= position_ids[r, j + 1]
        cu.append(r * s + s)
    return position_ids, loss_mask, np.asarray(cu, dtype=np.int32)
