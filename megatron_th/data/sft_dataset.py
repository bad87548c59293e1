"""SFT samples: whole conversations packed into ``seq_length`` sequences, no cross-contamination.

Data: record-aligned indexed datasets ``PREFIX_tokens`` and ``PREFIX_loss_mask`` (uint8), as
tools/preprocess_sft.py writes them; record i is conversation i, the same length in both, and
``loss_mask[t] = 1`` when token t is trained on (an assistant token).

Labels are per conversation: a conversation of n tokens occupies n positions of a sample; position
t holds token t, its label is token t+1 of the same conversation and is trained iff
``loss_mask[t+1]``; the last position has no label (never trained), so no conversation ever
predicts another's first token and no first token is ever a target. Hence a bin holds at most
``seq_length`` tokens (capacity = seq_length, not seq_length + 1 as in pretraining).

Index (per split, cached like GPTDataset's, through gpt_dataset._cached_index):
- epoch e: the split's conversations in an order shuffled from (seed, split, 2, e), packed
  best-fit decreasing (the C++ kernel; the stable sort by length keeps that shuffled order among
  equal lengths), the epoch's bins then shuffled from (seed, split, 3, e); ``pack=False`` puts one
  conversation per sample instead;
- epochs are appended until they hold ``num_samples`` samples; epoch e depends on (seed, split, e)
  alone, so asking for more samples only appends.
Stored in the GPT index's three arrays: ``doc`` = conversation ids in bin order (epochs
concatenated), ``sample`` = int64 [bins+1] offsets into ``doc`` (bin r is doc[sample[r]:sample[r+1]]),
``shuffle`` = global sample -> bin.

Attention: each conversation is its own document of the THD ``cu_seqlens`` (model/attention.py);
the padding at the end of a sample is one more document, so nothing attends across either.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from megatron_th.config import ConfigError
from megatron_th.data.gpt_dataset import (SPLIT_NAMES, _cached_index, _rng, check_vocabulary,
                                          default_cache_dir, split_ranges, token_range, parse_split)
from megatron_th.data.indexed import IndexedDataset, IndexedDatasetError
from megatron_th.data.kernels import best_fit_decreasing

TOKENS_SUFFIX, LOSS_MASK_SUFFIX = "_tokens", "_loss_mask"
SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "cu_seqlens", "conversation_ids")


def open_sft_data(prefix: str) -> tuple[IndexedDataset, IndexedDataset]:
    """(tokens, loss_mask) indexed datasets of ``PREFIX_tokens`` and ``PREFIX_loss_mask``.

    Raises ConfigError naming --data-path and the file when either is missing or malformed, the
    loss mask is not uint8, or the two are not record-aligned (record count or any length)."""
    try:
        tokens = IndexedDataset(prefix + TOKENS_SUFFIX)
        mask = IndexedDataset(prefix + LOSS_MASK_SUFFIX)
    except (IndexedDatasetError, FileNotFoundError) as e:
        raise ConfigError(f"--data-path {prefix}: {e} (SFT data is PREFIX{TOKENS_SUFFIX}.bin/.idx and "
                          f"PREFIX{LOSS_MASK_SUFFIX}.bin/.idx, from tools/preprocess_sft.py)") from None
    where = f"--data-path {prefix}: {mask.prefix}.idx"
    if mask.dtype != np.uint8:
        raise ConfigError(f"{where} stores {mask.dtype.name}; the loss mask must be uint8")
    if len(mask) != len(tokens):
        raise ConfigError(f"{where} holds {len(mask)} records, {tokens.prefix}.idx {len(tokens)}; "
                          f"they must be record-aligned")
    diff = np.flatnonzero(mask.sizes != tokens.sizes)
    if len(diff):
        i = int(diff[0])
        raise ConfigError(f"{where}: record {i} has {mask.sizes[i]} entries, its conversation {tokens.sizes[i]} "
                          f"tokens ({len(diff)} records differ); they must be record-aligned")
    return tokens, mask


class SFTDataset:
    """Packed SFT samples of ``seq_length`` positions from conversations [doc_start, doc_end).

    ``prefix``: the SFT data prefix (open_sft_data). ``split``: 0/1/2 (train/valid/test), with
    ``doc_range`` its records (gpt_dataset.split_ranges). ``num_samples``: how many samples the
    trainer asks for (epochs are repeated, each reshuffled and repacked). ``pack=False``: one
    conversation per sample, padded (the unpacked reference). ``pad_token_id``: the token id of
    padding positions (never attended by a conversation, never in the loss; must be in the
    vocabulary). ``cache_dir``/``group``: as GPTDataset (rank 0 builds, the others wait and load).
    ``log``: called with one line reporting the packing efficiency (non-pad fraction).
    Zero-length records are skipped. Raises ConfigError naming the prefix, the count and the
    longest length when a conversation of the split is longer than ``seq_length``, and when the
    split holds no conversation.

    ``ds[i]`` is a dict of numpy arrays (length ``seq_length`` unless said):
    tokens int64; labels int64 (next token of the same conversation, 0 where there is none);
    loss_mask float32 (1 where the label is trained); position_ids int64 (0, 1, ... per
    conversation and for the padding); cu_seqlens int32 [k+1] (row-local boundaries: 0, the end
    of each conversation, then seq_length if padded); conversation_ids int64 [k] (records).
    Samples [e*P, (e+1)*P) are epoch e (P = ``samples_per_epoch``): each conversation once."""

    def __init__(self, prefix: str, split: int, doc_range: tuple[int, int], seq_length: int, seed: int,
                 num_samples: int, pack: bool = True, pad_token_id: int = 0, cache_dir: str | None = None,
                 group=None, log=print):
        self.prefix, self.split, self.seq_length, self.seed = prefix, split, int(seq_length), seed
        self.pack, self.pad_token_id, self.num_samples = bool(pack), int(pad_token_id), int(num_samples)
        self.name = f"{os.path.basename(prefix)}:{SPLIT_NAMES[split]}"
        self.tokens, self.mask = open_sft_data(prefix)
        if self.seq_length < 1:
            raise ConfigError(f"--seq-length must be positive, got {seq_length}")
        sizes = self.tokens.sizes
        ids = np.arange(*doc_range, dtype=np.int64)
        self.skipped = int((sizes[ids] == 0).sum())
        self.conv_ids = ids[sizes[ids] > 0]
        lengths = sizes[self.conv_ids]
        if len(lengths) == 0:
            raise ConfigError(f"--data-path {prefix}: the {SPLIT_NAMES[split]} split (records {doc_range[0]}.."
                              f"{doc_range[1]}) holds no conversation")
        over = lengths > self.seq_length
        if over.any():
            raise ConfigError(f"--data-path {prefix}: {int(over.sum())} of the {len(lengths)} conversations of the "
                              f"{SPLIT_NAMES[split]} split are longer than --seq-length {self.seq_length} (longest: "
                              f"{int(lengths.max())} tokens); preprocess with tools/preprocess_sft.py --overlong "
                              f"truncate|drop --max-seq-length {self.seq_length}, or raise --seq-length")

        def key():  # hashes the whole sizes array: only the rank that decides calls it
            return {"kind": "sft", "data": hashlib.sha1(np.ascontiguousarray(sizes).tobytes()).hexdigest(),
                    "split": split, "docs": list(doc_range), "seed": seed, "seq_length": self.seq_length,
                    "pack": self.pack, "epochs": self._epochs(), "version": 1}
        self.doc_range, self.log = (int(doc_range[0]), int(doc_range[1])), log
        cache_dir = self.cache_dir = default_cache_dir(self.tokens.prefix, cache_dir)
        self.index = _cached_index(cache_dir, os.path.basename(prefix) + "_sft", split, key, self._build, group)
        nbins = len(self.index.shuffle_idx)
        self.num_epochs = len(self.index.doc_idx) // len(self.conv_ids)  # every epoch holds each once
        self.samples_per_epoch = nbins // self.num_epochs
        real = int(sizes[self.index.doc_idx].sum(dtype=np.int64))
        self.packing_efficiency = real / (nbins * self.seq_length)
        how = "packed best-fit decreasing" if self.pack else "one conversation per sequence"
        note = f"; {self.skipped} empty records skipped" if self.skipped else ""
        log(f"{self.name}: {len(self.conv_ids)} conversations -> {self.samples_per_epoch} sequences of "
            f"{self.seq_length} tokens per epoch ({how}), {self.num_epochs} epoch(s) for {self.num_samples} "
            f"samples; packing efficiency {self.packing_efficiency:.2%} (non-pad tokens){note}")

    def _per_epoch(self) -> int:
        """Samples per epoch. For packing it is the same for every epoch: best-fit decreasing sees
        the lengths sorted (their order is all the shuffle changes), so every epoch's bins have the
        same lengths."""
        if not self.pack:
            return len(self.conv_ids)
        if not hasattr(self, "_bins_per_epoch"):
            offsets, _ = best_fit_decreasing(self.tokens.sizes[self.conv_ids], self.seq_length)
            self._bins_per_epoch = len(offsets) - 1
        return self._bins_per_epoch

    def _epochs(self) -> int:
        return max(-(-self.num_samples // self._per_epoch()), 1)

    def _build(self):
        docs, offsets, shuffle, nbins = [], [np.zeros(1, np.int64)], [], 0
        for e in range(self._epochs()):
            order = _rng(self.seed, self.split, 2, e).permutation(self.conv_ids)
            if self.pack:
                off, items = best_fit_decreasing(self.tokens.sizes[order], self.seq_length)
                order, ends = order[items], off[1:]
            else:
                ends = np.arange(1, len(order) + 1, dtype=np.int64)
            assert len(ends) == self._per_epoch(), (self.name, e, len(ends))
            offsets.append(ends + sum(len(d) for d in docs))
            docs.append(order)
            shuffle.append(nbins + _rng(self.seed, self.split, 3, e).permutation(len(ends)))
            nbins += len(ends)
        return (np.concatenate(docs).astype(np.int64), np.concatenate(offsets).astype(np.int64),
                np.concatenate(shuffle).astype(np.int64))

    def one_epoch(self, group=None) -> "SFTDataset":
        """This split's conversations once each (``--full-validation``): ``samples_per_epoch``
        samples, the same as this dataset's first ones (epoch 0)."""
        return SFTDataset(self.prefix, self.split, self.doc_range, self.seq_length, self.seed,
                          self.samples_per_epoch, self.pack, self.pad_token_id, self.cache_dir, group, self.log)

    def __len__(self) -> int:
        return self.num_samples

    def conversations(self, i: int) -> np.ndarray:
        """int64: the records packed in global sample i, in their order in the sample."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.name}: sample {i} out of range {self.num_samples}")
        r = int(self.index.shuffle_idx[i])
        return np.asarray(self.index.doc_idx[int(self.index.sample_idx[r]):int(self.index.sample_idx[r + 1])],
                          dtype=np.int64)

    def __getitem__(self, i: int) -> dict:
        """Global sample i as a dict of numpy arrays (see the class docstring)."""
        convs = self.conversations(i)
        s = self.seq_length
        tokens = np.full(s, self.pad_token_id, dtype=np.int64)
        labels = np.zeros(s, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.zeros(s, dtype=np.int64)
        cu = [0]
        t = 0
        for c in convs.tolist():
            x, m = self.tokens.get(c), self.mask.get(c)
            n = len(x)
            tokens[t:t + n] = x
            labels[t:t + n - 1] = x[1:]
            loss_mask[t:t + n - 1] = m[1:] != 0
            position_ids[t:t + n] = np.arange(n)
            t += n
            cu.append(t)
        if t < s:  # the padding: one more document, positions restarting too
            position_ids[t:] = np.arange(s - t)
            cu.append(s)
        return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
                "cu_seqlens": np.asarray(cu, dtype=np.int32), "conversation_ids": convs}


def collate(samples: list[dict]) -> dict:
    """A micro-batch of SFTDataset samples -> the batch training consumes (packing.make_batch's
    keys): tokens, labels, position_ids int64 [b, s], loss_mask float32 [b, s] (torch tensors) and
    cu_seqlens int32 (THD boundaries flattened over the batch: row r's boundaries shifted by r*s,
    so it starts with 0, ends with b*s and holds every multiple of s; see model/attention.py).
    Raises ValueError for an empty list, rows of different lengths or b*s beyond int32."""
    if not samples:
        raise ValueError("collate: no samples")
    s = len(samples[0]["tokens"])
    if any(len(x["tokens"]) != s for x in samples):
        raise ValueError(f"collate: samples of different lengths {sorted({len(x['tokens']) for x in samples})}")
    if len(samples) * s > 2**31 - 1:
        raise ValueError(f"collate: batch * seq = {len(samples)} * {s} does not fit the int32 cu_seqlens")
    cu = [np.zeros(1, np.int64)] + [r * s + x["cu_seqlens"][1:].astype(np.int64) for r, x in enumerate(samples)]
    batch = {k: torch.from_numpy(np.stack([x[k] for x in samples])) for k in
             ("tokens", "labels", "loss_mask", "position_ids")}
    batch["cu_seqlens"] = torch.from_numpy(np.concatenate(cu).astype(np.int32))
    return batch


def build_sft_datasets(prefix: str, split: str, seq_length: int, seed: int, num_samples: dict[str, int],
                       pack: bool = True, pad_token_id: int = 0, cache_dir: str | None = None, log=print,
                       group=None, vocab_size: int | None = None, vocab_name: str = "the tokenizer") -> dict:
    """``{"train": ds, "valid": ds, "test": ds}`` of SFTDataset over one SFT prefix, split by
    records as gpt_dataset.build_datasets splits documents (split_ranges). A split asked for no
    samples is None; a valid/test split without records is None (noted through ``log``); given
    ``vocab_size``, token ids outside [0, vocab_size) are refused (check_vocabulary). Errors are
    ConfigError naming --data-path / --split."""
    try:
        parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tokens, _ = open_sft_data(prefix)
    if vocab_size is not None:
        check_vocabulary(tokens, token_range(tokens, cache_dir, group), vocab_size, vocab_name)
    ranges = split_ranges(len(tokens), split)
    out = {}
    for s, name in enumerate(SPLIT_NAMES):
        n = int(num_samples.get(name, 0))
        a, b = ranges[s]
        if n > 0 and s > 0 and not (tokens.sizes[a:b] > 0).any():
            log(f"note: the {name} split of --split {split} gets no conversations; it is skipped")
            n = 0
        out[name] = (SFTDataset(prefix, s, ranges[s], seq_length, seed, n, pack, pad_token_id, cache_dir, group, log)
                     if n > 0 else None)
    return out
