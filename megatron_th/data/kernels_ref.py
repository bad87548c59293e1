"""Plain numpy/Python references of the C++ kernels in csrc/ (tests prove the two identical).

Written from the definitions, not from the C++ loops: the sample index from the token stream
(cumulative sizes + searchsorted), blending by evaluating the greedy rule literally, packing row
by row, best-fit decreasing by scanning every open bin for each item. Same signatures, dtypes
and ValueErrors as ``megatron_th._C``.
"""
from __future__ import annotations

import numpy as np


def _ndim(a: np.ndarray, ndim: int, name: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got ndim={a.ndim}")


def build_sample_idx(sizes, doc_idx, seq_length: int, num_samples: int) -> np.ndarray:
    """int64 [num_samples+1, 2]. The stream is documents doc_idx[0], doc_idx[1], ... back to back
    (empty documents hold no token); sample i is stream tokens [i*L, i*L + L] with L = seq_length.
    Row i = (p, o): stream token i*L is token o of document doc_idx[p]. So row i is where sample i
    starts, and row i+1 is both the last token of sample i and the first of sample i+1."""
    sizes = np.asarray(sizes, dtype=np.int32)
    doc_idx = np.asarray(doc_idx, dtype=np.int64)
    _ndim(sizes, 1, "sizes")
    _ndim(doc_idx, 1, "doc_idx")
    seq_length, num_samples = int(seq_length), int(num_samples)
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if np.any(sizes < 0):
        d = int(np.flatnonzero(sizes < 0)[0])
        raise ValueError(f"sizes[{d}] is negative ({sizes[d]})")
    bad = (doc_idx < 0) | (doc_idx >= len(sizes))
    if np.any(bad):
        p = int(np.flatnonzero(bad)[0])
        raise ValueError(f"doc_idx[{p}] = {doc_idx[p]} is outside sizes ({len(sizes)} documents)")
    lengths = sizes[doc_idx].astype(np.int64)
    ends = np.cumsum(lengths)            # stream index one past each document
    starts = ends - lengths              # stream index of each document's first token
    have = int(ends[-1]) if len(ends) else 0
    if num_samples * seq_length + 1 > 2**63 - 1:
        raise ValueError(f"num_samples * seq_length overflows int64 ({num_samples} * {seq_length})")
    need = num_samples * seq_length + 1
    if have < need:
        raise ValueError(f"not enough tokens: {num_samples} samples of seq_length {seq_length} need {need} "
                         f"tokens, documents hold {have}")
    t = np.arange(num_samples + 1, dtype=np.int64) * seq_length  # stream index of each sample start
    p = np.searchsorted(ends, t, side="right")                    # the document with start <= t < end
    return np.stack([p, t - starts[p]], axis=1).astype(np.int64)


def _normalize(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    _ndim(w, 1, "weights")
    if not 1 <= len(w) <= 32767:
        raise ValueError(f"need 1..32767 blending weights, got {len(w)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"blending weights must be finite and non-negative, got {w.tolist()}")
    total = 0.0
    for x in w.tolist():  # left to right (np.sum is pairwise: it can differ in the last bit)
        total += x
    if not (0.0 < total < float("inf")):
        raise ValueError("blending weights must have a finite positive sum")
    return w / total


def build_blending_indices(weights, size: int, num_threads: int = 0, warmup: int = 4096):
    """(dataset_index int16 [size], dataset_sample_index int64 [size]): output i comes from the
    dataset d maximising w[d]*max(i, 1) - taken[d] (w normalised; lowest d on ties). This is
    Megatron's rule (megatron/core/datasets/helpers.cpp ``build_blending_indices``), evaluated one
    output at a time; ``num_threads`` and ``warmup`` (how the C++ kernel splits the work) are
    accepted and ignored, since the result does not depend on them."""
    size = int(size)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    w = _normalize(weights)
    taken = np.zeros(len(w), dtype=np.int64)
    dataset_index = np.zeros(size, dtype=np.int16)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    for i in range(size):
        d = int(np.argmax(w * max(i, 1) - taken))  # argmax returns the first maximum
        dataset_index[i], dataset_sample_index[i] = d, taken[d]
        taken[d] += 1
    return dataset_index, dataset_sample_index


def packed_metadata(tokens, eod: int, reset_position_ids: bool, eod_mask_loss: bool):
    """(position_ids int64 [b,s], loss_mask float32 [b,s], cu_seqlens int32) of EOD-packed rows;
    an EOD closes its document, the token after it starts the next one."""
    tokens = np.asarray(tokens, dtype=np.int64)
    _ndim(tokens, 2, "tokens")
    b, s = tokens.shape
    if s == 0:
        raise ValueError("tokens must have non-empty rows (seq length 0)")
    if b * s > 2**31 - 1:
        raise ValueError(f"batch * seq = {b} * {s} does not fit the int32 cu_seqlens")
    position_ids = np.tile(np.arange(s, dtype=np.int64), (b, 1))
    loss_mask = np.ones((b, s), dtype=np.float32)
    if eod_mask_loss:
        loss_mask[tokens == eod] = 0.0
    cu_seqlens = [0]
    for r in range(b):
        for j in np.flatnonzero(tokens[r] == eod):
            if j + 1 < s:
                cu_seqlens.append(r * s + j + 1)
                if reset_position_ids:
                    position_ids[r, j + 1:] = np.arange(s - j - 1)
        cu_seqlens.append(r * s + s)
    return position_ids, loss_mask, np.asarray(cu_seqlens, dtype=np.int32)


def best_fit_decreasing(lengths, capacity: int):
    """(bin_offsets int64 [nbins+1], bin_items int64 [n]): best-fit-decreasing bin packing.

    Items are taken in order of decreasing length, equal lengths in input order (a stable sort);
    each goes into the open bin with the least remaining space that still fits it (the lowest bin
    id among equals), else into a new bin. Bin b holds items ``bin_items[bin_offsets[b]:
    bin_offsets[b+1]]`` (indices into lengths, in placement order); bins are numbered in opening
    order. Every length must be in [1, capacity]. (Johnson, "Near-optimal bin packing
    algorithms", MIT 1973: at most 11/9 OPT + 6/9 bins, as first-fit decreasing.)"""
    lengths = np.asarray(lengths, dtype=np.int64)
    _ndim(lengths, 1, "lengths")
    capacity = int(capacity)
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    bad = np.flatnonzero(lengths < 1)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"lengths[{i}] = {lengths[i]} is not positive (every item needs at least one token)")
    over = lengths > capacity
    if np.any(over):
        raise ValueError(f"{int(over.sum())} of the {len(lengths)} lengths exceed the capacity {capacity} "
                         f"(longest: {int(lengths.max())})")
    remaining: list[int] = []
    bins: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        fits = [b for b, r in enumerate(remaining) if r >= n]
        if fits:
            b = min(fits, key=lambda b: remaining[b])  # min keeps the first (lowest id) of equals
            remaining[b] -= n
            bins[b].append(i)
        else:
            remaining.append(capacity - n)
            bins.append([i])
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in bins], dtype=np.int64)
    items = np.asarray([i for b in bins for i in b], dtype=np.int64)
    return offsets, items


# Explicit names for callers that want the reference next to the C++ version.
build_sample_idx_ref = build_sample_idx
build_blending_indices_ref = build_blending_indices
packed_metadata_ref = packed_metadata
best_fit_decreasing_ref = best_fit_decreasing
