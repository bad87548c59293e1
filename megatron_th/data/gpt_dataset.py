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

import hashlib
import json
import os
import socket
from dataclasses import dataclass

import numpy as np

from megatron_th.config import ConfigError
from megatron_th.data.indexed import IndexedDataset, IndexedDatasetError
from megatron_th.data.kernels import build_blending_indices, build_sample_idx
from megatron_th.parallel import host_sync

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


def _index_files(cache_dir: str, stem: str) -> list[str]:
    return [os.path.join(cache_dir, f"{stem}.{n}.npy") for n in ("doc", "sample", "shuffle")]


def _cache_error(cache_dir: str, e: OSError) -> ConfigError:
    return ConfigError(f"--data-cache-path: cannot write dataset indices to {cache_dir} ({e.strerror or e}); "
                       f"give --data-cache-path a writable directory that every rank can read "
                       f"(default: index_cache/ beside the data)")


def _write_index(files: list[str], arrays) -> None:
    """Writes each array under a unique temporary name, then renames it: a killed build leaves
    nothing half-written, and two nodes building at once write identical files."""
    cache_dir = os.path.dirname(files[0])
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for f, a in zip(files, arrays):
            tmp = f"{f}.{socket.gethostname()}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, a)
            os.replace(tmp, f)
    except OSError as e:
        raise _cache_error(cache_dir, e) from None


def default_cache_dir(prefix: str, cache_dir: str | None = None) -> str:
    """``cache_dir`` (--data-cache-path) or ``index_cache/`` beside the data prefix."""
    return cache_dir or os.path.join(os.path.dirname(os.path.abspath(prefix)), "index_cache")


def token_range(indexed: IndexedDataset, cache_dir: str | None = None, group=None) -> tuple[int, int] | None:
    """(smallest, largest) token id of the whole dataset (IndexedDataset.token_range), computed once
    and cached beside the sample indices as ``<name>_tokens_<digest>.json``; rank 0 computes, the
    others wait and read (host_sync.one_rank_builds, as _cached_index). The key hashes the sequence
    lengths, the dtype and the .bin's size and modification time, so a rewritten dataset is
    rescanned. None for a dataset without tokens. Raises ConfigError naming --data-cache-path
    when the directory is not writable."""
    cache_dir = default_cache_dir(indexed.prefix, cache_dir)
    name = os.path.basename(indexed.prefix)

    def plan():
        st = os.stat(indexed.prefix + ".bin")
        key = {"data": hashlib.sha1(np.ascontiguousarray(indexed.sizes).tobytes()).hexdigest(),
               "dtype": str(indexed.dtype), "bin_bytes": st.st_size, "bin_mtime_ns": st.st_mtime_ns, "version": 1}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def path(digest):
        return os.path.join(cache_dir, f"{name}_tokens_{digest}.json")

    def build(digest):
        rng = indexed.token_range()
        target = path(digest)
        tmp = f"{target}.{socket.gethostname()}.{os.getpid()}.tmp"
        try:
            os.makedirs(cache_dir, exist_ok=True)
            with open(tmp, "w") as fh:
                json.dump({"range": rng, "dtype": str(indexed.dtype)}, fh)
            os.replace(tmp, target)
        except OSError as e:
            raise _cache_error(cache_dir, e) from None

    digest = host_sync.one_rank_builds(plan, lambda dg: os.path.exists(path(dg)), build, group,
                                       shared=(ConfigError, FileNotFoundError))
    with open(path(digest)) as fh:
        rng = json.load(fh)["range"]
    return None if rng is None else (rng[0], rng[1])


def check_vocabulary(indexed: IndexedDataset, rng: tuple[int, int] | None, vocab_size: int,
                     vocab_name: str = "the tokenizer") -> None:
    """The data-to-model contract of one dataset: integer token ids in [0, vocab_size).

    Megatron-LM checks none of this: an id >= the vocabulary indexes past the embedding (an
    IndexError at TP=1; at TP>1 vocab-parallel embedding masks it to a zero row and the loss is
    meaningless). ``rng`` is ``token_range()``. Raises ConfigError naming the dataset prefix, the
    offending id, the dtype and the vocabulary size."""
    p, dt = indexed.prefix, indexed.dtype
    if dt.kind not in "ui":
        raise ConfigError(f"--data-path {p}: tokens are stored as {dt.name} ({p}.idx); token ids must be "
                          f"integers (Megatron writes uint16 below 65500 pieces, else int32)")
    if rng is None:
        return
    lo, hi = rng
    if lo < 0:
        raise ConfigError(f"--data-path {p}: holds the negative token id {lo}; token ids run from 0 to "
                          f"{vocab_size - 1} ({vocab_name}, {vocab_size} pieces)")
    if hi >= vocab_size:
        made = ("a tokenizer of fewer than 65500 pieces" if dt == np.uint16 else
                "a tokenizer of 65500 pieces or more" if dt == np.int32 else "another tokenizer")
        raise ConfigError(f"--data-path {p}: largest token id {hi} is outside the vocabulary of {vocab_name} "
                          f"({vocab_size} pieces, ids 0..{vocab_size - 1}); the data ({dt.name} ids, as "
                          f"Megatron's preprocessing writes for {made}) was made with another tokenizer: "
                          f"give the --tokenizer-model it was made with, or preprocess it again")


def _cached_index(cache_dir: str, prefix_name: str, split: int, key, build, group=None) -> "_Index":
    """Loads ``cache_dir/<name>_<split>_<digest>.{doc,sample,shuffle}.npy``, built once.

    ``key()`` gives the cache key (hashing the data), called only on rank 0; its digest is
    broadcast. Rank 0 builds, the others wait on ``group`` (host_sync.host_group); if some rank
    cannot see the files (node-local cache), local rank 0 of each node builds them (see
    host_sync.one_rank_builds). No file locks (Lustre may lack flock; NFS locks are per node).
    Raises ConfigError naming --data-cache-path when the directory is not writable."""
    def plan():
        return hashlib.sha1(json.dumps(key(), sort_keys=True).encode()).hexdigest()[:16]

    def files(digest):
        return _index_files(cache_dir, f"{prefix_name}_{SPLIT_NAMES[split]}_{digest}")

    def missing(digest, ranks):
        return FileNotFoundError(f"--data-cache-path: ranks {ranks} cannot see the dataset indices "
                                 f"{files(digest)[0]} even after building them on their node; give "
                                 f"--data-cache-path a directory every rank can read and write")

    digest = host_sync.one_rank_builds(plan, lambda dg: all(os.path.exists(f) for f in files(dg)),
                                       lambda dg: _write_index(files(dg), build()), group,
                                       shared=(ConfigError, FileNotFoundError), missing=missing)
    return _Index(*(np.load(f, mmap_mode="r") for f in files(digest)))


class GPTDataset:
    """Samples of ``seq_length + 1`` tokens from documents [doc_start, doc_end) of one dataset.

    Its indices are cached in ``cache_dir`` (default: ``index_cache/`` beside the data). With
    ``group`` (host_sync.host_group(), every rank constructing the same datasets in the same
    order) rank 0 hashes the data and builds, the others wait and load; without it (one process)
    this process does both."""

    def __init__(self, indexed: IndexedDataset, split: int, doc_range: tuple[int, int], seq_length: int,
                 seed: int, num_samples: int, cache_dir: str | None = None, group=None):
        self.indexed, self.split, self.seq_length, self.seed = indexed, split, seq_length, seed
        self.name = f"{os.path.basename(indexed.prefix)}:{SPLIT_NAMES[split]}"
        self.doc_ids = np.arange(*doc_range, dtype=np.int64)
        self.tokens_per_epoch = int(indexed.sizes[doc_range[0]:doc_range[1]].sum(dtype=np.int64))
        if self.tokens_per_epoch < 2:
            raise ValueError(f"{indexed.prefix}: split {SPLIT_NAMES[split]} has {self.tokens_per_epoch} tokens")
        self.block = max(self.tokens_per_epoch // seq_length, 1)
        blocks = max(-(-num_samples // self.block), 1)
        self.num_raw = blocks * self.block
        self.num_epochs = -(-(self.num_raw * seq_length + 1) // self.tokens_per_epoch)
        self.num_samples = num_samples

        def key():  # hashes the whole sizes array: only the rank that decides calls it
            return {"data": hashlib.sha1(np.ascontiguousarray(indexed.sizes).tobytes()).hexdigest(),
                    "dtype": str(indexed.dtype), "split": split, "docs": list(doc_range), "seed": seed,
                    "seq_length": seq_length, "blocks": blocks, "version": 1}
        cache_dir = self.cache_dir = default_cache_dir(indexed.prefix, cache_dir)
        self.index = _cached_index(cache_dir, os.path.basename(indexed.prefix), split, key, self._build, group)

    def one_epoch(self, group=None) -> "GPTDataset":
        """This split's samples of one epoch, each once (``--full-validation``): the first
        ``tokens_per_epoch // seq_length`` samples of the order, a permutation of epoch 0's."""
        return GPTDataset(self.indexed, self.split, (int(self.doc_ids[0]), int(self.doc_ids[-1]) + 1),
                          self.seq_length, self.seed, self.block, self.cache_dir, group)

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
                   num_samples: dict[str, int], cache_dir: str | None = None, log=print, group=None,
                   vocab_size: int | None = None, vocab_name: str = "the tokenizer") -> dict:
    """``{"train": ds, "valid": ds, "test": ds}``. Several prefixes are blended by weight (or by
    token count if no weights). ``group``: host_sync.host_group() when every rank calls this
    (rank 0 builds the indices).

    Splits are cut over the sequences of each dataset, as megatron-core's GPTDataset
    (``numel_low_level_dataset``: one sequence is one document to sample). Checked before any
    index is built, each a ConfigError naming --data-path (and --split): a malformed .idx/.bin
    (IndexedDatasetError), a dataset without tokens, a train split that leaves some dataset of
    the blend fewer than 2 tokens (a sample needs 2), and, given ``vocab_size``, token ids outside
    [0, vocab_size) (check_vocabulary; largest id cached by token_range). A valid/test split that
    gets no documents is None (reported once)."""
    try:
        blend = parse_data_path(data_path)
        parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    indexed = []
    for _, p in blend:
        try:
            indexed.append(IndexedDataset(p))
        except IndexedDatasetError as e:
            raise ConfigError(f"--data-path {p}: {e}") from None
    for ds in indexed:
        if ds.num_tokens == 0:
            raise ConfigError(f"--data-path {ds.prefix}: the dataset holds no tokens ({len(ds)} sequences, "
                              f"{len(ds.document_indices) - 1} documents in {ds.prefix}.idx); nothing to train on")
    if blend[0][0] is None:
        weights = [float(ds.num_tokens) for ds in indexed]
    else:
        weights = [w for w, _ in blend]
    ranges = [split_ranges(len(ds), split) for ds in indexed]

    def tokens(d, s):
        return int(indexed[d].sizes[ranges[d][s][0]:ranges[d][s][1]].sum(dtype=np.int64))

    if int(num_samples.get("train", 0)) > 0:
        for d, ds in enumerate(indexed):
            if weights[d] > 0 and tokens(d, 0) < 2:
                a, b = ranges[d][0]
                raise ConfigError(f"--split {split} gives the train split {b - a} of the {len(ds)} documents of "
                                  f"--data-path {ds.prefix} ({tokens(d, 0)} tokens; a sample needs at least 2): "
                                  f"give the train split a larger share or add data")
    if vocab_size is not None:
        for ds in indexed:
            check_vocabulary(ds, token_range(ds, cache_dir, group), vocab_size, vocab_name)
    out = {}
    for s, name in enumerate(SPLIT_NAMES):
        n = int(num_samples.get(name, 0))
        live = [d for d in range(len(indexed)) if weights[d] > 0 and tokens(d, s) >= 2]
        if n <= 0:
            out[name] = None
            continue
        if not live:
            log(f"note: the {name} split of --split {split} gets no documents; it is skipped")
            out[name] = None
            continue
        def make(j, count, s=s, live=live):
            d = live[j]
            return GPTDataset(indexed[d], s, ranges[d][s], seq_length, seed, count, cache_dir, group)
        if len(indexed) == 1:
            out[name] = make(0, n)
        else:
            out[name] = BlendedDataset([weights[d] for d in live], n, make)
    return out
