"""GPT samples from indexed datasets: document split, epochs, shuffles, cached indices, blending.

The global sample order is a pure function of (data, seed, seq_length, split, blend). Unlike
Megatron-LM, it does not depend on how many samples are requested:

- epoch e visits the split's documents in an order shuffled from (seed, split, e) alone;
- samples are ``seq_length + 1`` tokens cut across the concatenated epochs, consecutive samples
  sharing one token (the C++ sample index);
- sample order is shuffled within blocks of ``S = tokens_per_epoch // seq_length`` samples, block k
  from (seed, split, k) alone; only whole blocks are ever built.

So asking for more samples only appends: the first N samples never change.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from megatron_th.data.indexed import IndexedDataset
from megatron_th.data.kernels import build_blending_indices, build_sample_idx

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(split: str) -> list[float]:
    """'949,50,1' -> normalized weights for train/valid/test (missing entries are 0)."""
    try:
        parts = [float(x) for x in str(split).replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected comma-separated numbers like 949,50,1") from None
    parts = (parts + [0.0, 0.0, 0.0])[:3]
    if any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {split!r}: weights must be non-negative with a positive sum")
    total = sum(parts)
    return [p / total for p in parts]


def split_ranges(num_docs: int, split: str) -> list[tuple[int, int]]:
    """Document ranges [start, end) of train/valid/test; rounding goes to the earlier splits."""
    weights = parse_split(split)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w * num_docs)))
    diff = bounds[-1] - num_docs
    bounds = [bounds[0]] + [max(b - diff, 0) for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def parse_data_path(items: list[str]) -> list[tuple[float, str]]:
    """``[w1, p1, w2, p2, ...]`` or ``[p1, p2, ...]`` -> [(weight, prefix)] (weights unnormalized;
    None when not given)."""
    if not items:
        raise ValueError("--data-path: no dataset given")
    def is_num(s):
        try:
            float(s)
            return True
        except ValueError:
            return False
    if len(items) % 2 == 0 and all(is_num(items[i]) for i in range(0, len(items), 2)):
        out = [(float(items[i]), items[i + 1]) for i in range(0, len(items), 2)]
        if any(w < 0 for w, _ in out) or sum(w for w, _ in out) <= 0:
            raise ValueError("--data-path: weights must be non-negative with a positive sum")
        return out
    if any(is_num(x) for x in items):
        raise ValueError(f"--data-path {' '.join(items)}: give either 'w1 p1 w2 p2 ...' or only prefixes")
    return [(None, p) for p in items]


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(key)))


@dataclass
class _Index:
    doc_idx: np.ndarray      # int64: documents to read, epochs concatenated
    sample_idx: np.ndarray   # int64 [n+1, 2]: (position in doc_idx, offset)
    shuffle_idx: np.ndarray  # int64 [n]: global sample -> raw sample


def _locked_build(path_base: str, build):
    """Load ``path_base.{doc,sample,shuffle}.npy``, building them once under a file lock.

    Whoever takes the lock first builds (rank 0 in practice); the others wait and load. Files are
    written under temporary names and renamed, so a killed build leaves nothing half-written.
    """
    names = ("doc", "sample", "shuffle")
    files = [f"{path_base}.{n}.npy" for n in names]
    os.makedirs(os.path.dirname(path_base), exist_ok=True)
    with open(path_base + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not all(os.path.exists(f) for f in files):
                arrays = build()
                for f, a in zip(files, arrays):
                    tmp = f + f".{os.getpid()}.tmp"
                    with open(tmp, "wb") as fh:
                        np.save(fh, a)
                    os.replace(tmp, f)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _Index(*(np.load(f, mmap_mode="r") for f in files))


class GPTDataset:
    """Samples of ``seq_length + 1`` tokens from documents [doc_start, doc_end) of one dataset."""

    def __init__(self, indexed: IndexedDataset, split: int, doc_range: tuple[int, int], seq_length: int,
                 seed: int, num_samples: int, cache_dir: str | None = None):
        self.indexed, self.split, self.seq_length, self.seed = indexed, split, seq_length, seed
        self.name = f"{os.path.basename(indexed.prefix)}:{SPLIT_NAMES[split]}"
        self.doc_ids = np.arange(*doc_range, dtype=np.int64)
        self.tokens_per_epoch = int(indexed.sizes[self.doc_ids].sum(dtype=np.int64))
        if self.tokens_per_epoch < 2:
            raise ValueError(f"{indexed.prefix}: split {SPLIT_NAMES[split]} has {self.tokens_per_epoch} tokens")
        self.block = max(self.tokens_per_epoch // seq_length, 1)
        blocks = max(-(-num_samples // self.block), 1)
        self.num_raw = blocks * self.block
        self.num_epochs = -(-(self.num_raw * seq_length + 1) // self.tokens_per_epoch)
        self.num_samples = num_samples
        key = {"data": hashlib.sha1(np.ascontiguousarray(indexed.sizes).tobytes()).hexdigest(),
               "dtype": str(indexed.dtype), "split": split, "docs": list(doc_range), "seed": seed,
               "seq_length": seq_length, "blocks": blocks, "version": 1}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(indexed.prefix)), "index_cache")
        base = os.path.join(cache_dir, f"{os.path.basename(indexed.prefix)}_{SPLIT_NAMES[split]}_{digest}")
        self.index = _locked_build(base, self._build)

    def _build(self):
        doc_idx = np.concatenate([_rng(self.seed, self.split, 0, e).permutation(self.doc_ids)
                                  for e in range(self.num_epochs)])
        sample_idx = build_sample_idx(self.indexed.sizes.astype(np.int32, copy=False), doc_idx,
                                      self.seq_length, self.num_raw)
        nblocks = self.num_raw // self.block
        shuffle = np.concatenate([k * self.block + _rng(self.seed, self.split, 1, k).permutation(self.block)
                                  for k in range(nblocks)]).astype(np.int64)
        return doc_idx, sample_idx, shuffle

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        """Global sample i: int64 array of ``seq_length + 1`` tokens."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.name}: sample {i} out of range {self.num_samples}")
        r = int(self.index.shuffle_idx[i])
        (p0, o0), (p1, o1) = self.index.sample_idx[r], self.index.sample_idx[r + 1]
        doc_idx, get = self.index.doc_idx, self.indexed.get
        if p0 == p1:
            out = get(int(doc_idx[p0]), int(o0), int(o1 - o0 + 1))
        else:
            parts = [get(int(doc_idx[p0]), int(o0))]
            parts += [get(int(doc_idx[p])) for p in range(p0 + 1, p1)]
            parts.append(get(int(doc_idx[p1]), 0, int(o1) + 1))
            out = np.concatenate(parts)
        assert len(out) == self.seq_length + 1, (self.name, i, len(out))
        return out.astype(np.int64)


class BlendedDataset:
    """Interleaves datasets by weight with the greedy rule: sample i comes from the dataset that is
    furthest below its target share. ``source(i)`` tells which dataset sample i came from.

    ``make(d, n)`` builds component d with n samples; each gets exactly what the blend takes.
    """

    def __init__(self, weights: list[float], num_samples: int, make):
        w = np.asarray(weights, dtype=np.float64)
        self.weights, self.num_samples = w / w.sum(), num_samples
        self.dataset_index, self.dataset_sample_index = build_blending_indices(self.weights, num_samples)
        counts = np.bincount(self.dataset_index, minlength=len(w))
        self.datasets = [make(d, int(counts[d])) for d in range(len(w))]
        self.names = [d.name for d in self.datasets]

    def __len__(self) -> int:
        return self.num_samples

    def source(self, i: int) -> int:
        return int(self.dataset_index[i])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"blended dataset: sample {i} out of range {self.num_samples}")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]


def build_datasets(data_path: list[str], split: str, seq_length: int, seed: int,
                   num_samples: dict[str, int], cache_dir: str | None = None, log=print) -> dict:
    """``{"train": ds, "valid": ds, "test": ds}``; a split that gets no documents is None
    (reported once). Several prefixes are blended by weight (or by token count if no weights)."""
    blend = parse_data_path(data_path)
    indexed = [IndexedDataset(p) for _, p in blend]
    if blend[0][0] is None:
        weights = [float(ds.num_tokens) for ds in indexed]
    else:
        weights = [w for w, _ in blend]
    ranges = [split_ranges(len(ds.document_indices) - 1, split) for ds in indexed]
    out = {}
    for s, name in enumerate(SPLIT_NAMES):
        n = int(num_samples.get(name, 0))
        live = [d for d in range(len(indexed))
                if ranges[d][s][1] > ranges[d][s][0] and weights[d] > 0
                and int(indexed[d].sizes[ranges[d][s][0]:ranges[d][s][1]].sum()) >= 2]
        if n <= 0:
            out[name] = None
            continue
        if not live:
            log(f"note: the {name} split of --split {split} gets no documents; it is skipped")
            out[name] = None
            continue
        def make(j, count, s=s, live=live):
            d = live[j]
            return GPTDataset(indexed[d], s, ranges[d][s], seq_length, seed, count, cache_dir)
        if len(indexed) == 1:
            out[name] = make(0, n)
        else:
            out[name] = BlendedDataset([weights[d] for d in live], n, make)
    return out
