"""DPO samples: each preference pair's chosen and rejected sequences packed in one row.

Data (tools/preprocess_dpo.py): four record-aligned indexed datasets, record i = pair i:
``PREFIX_chosen_tokens`` / ``PREFIX_chosen_loss_mask`` (prompt + chosen completion, uint8 mask)
and ``PREFIX_rejected_tokens`` / ``PREFIX_rejected_loss_mask`` (prompt + rejected completion).
``loss_mask[t] = 1`` when token t is a completion token (SFT's convention, data/sft_dataset.py).

A sample is one pair in a row of ``seq_length`` tokens: the chosen sequence (positions restarting
at 0), then the rejected one (positions restarting again), then padding; each is its own document
of the THD ``cu_seqlens``, so neither attends to the other. Labels are per sequence as in SFT: the
label at position t is token t+1 of the same sequence, counted iff ``loss_mask[t+1]``; so the
summed log-probability of a completion is the sum over its counted label positions.

Order: a split's pairs are shuffled per epoch from (seed, split, 4, e) (``shuffle=False``: record
order, what tools/compute_ref_logps.py reads); epochs repeat until ``num_samples``.
"""
from __future__ import annotations

import numpy as np
import torch

from megatron_th.config import ConfigError
from megatron_th.data.gpt_dataset import SPLIT_NAMES, _rng, check_vocabulary, parse_split, split_ranges, token_range
from megatron_th.data.sft_dataset import collate as sft_collate
from megatron_th.data.sft_dataset import open_sft_data

SIDES = ("chosen", "rejected")


def open_dpo_data(prefix: str):
    """{"chosen": (tokens, mask), "rejected": (tokens, mask)} indexed datasets of a DPO prefix.
    Raises ConfigError naming --data-path when a file is missing, malformed or misaligned."""
    out = {side: open_sft_data(f"{prefix}_{side}") for side in SIDES}
    n = {side: len(out[side][0]) for side in SIDES}
    if n["chosen"] != n["rejected"]:
        raise ConfigError(f"--data-path {prefix}: {n['chosen']} chosen but {n['rejected']} rejected records "
                          f"(pairs must be record-aligned)")
    return out


class DPODataset:
    """Pairs [doc_range) of a DPO prefix, one per sample (see the module docstring).

    ``__getitem__(i)`` -> dict of numpy arrays of length ``seq_length``: tokens, labels
    (int64), loss_mask (float32, chosen and rejected completion label positions), chosen_mask and
    rejected_mask (float32, each side's), position_ids (int64), cu_seqlens (int32, row-local:
    0, end of chosen, end of rejected[, seq_length]), and pair_id (int64 scalar: the record).
    Raises ConfigError when a pair does not fit ``seq_length`` (naming the count and the longest)."""

    def __init__(self, prefix: str, split: int, doc_range: tuple[int, int], seq_length: int, seed: int,
                 num_samples: int, pad_token_id: int = 0, shuffle: bool = True):
        self.prefix, self.split, self.doc_range, self.seq_length = prefix, split, tuple(doc_range), seq_length
        self.seed, self.num_samples, self.pad_token_id, self.shuffle = seed, num_samples, pad_token_id, shuffle
        self.name = f"{prefix.rstrip('/').split('/')[-1]}:{SPLIT_NAMES[split]}"
        self.data = open_dpo_data(prefix)
        a, b = self.doc_range
        lengths = (self.data["chosen"][0].sizes[a:b].astype(np.int64)
                   + self.data["rejected"][0].sizes[a:b].astype(np.int64))
        over = lengths > seq_length
        if over.any():
            raise ConfigError(f"--data-path {prefix}: {int(over.sum())} pairs of split {SPLIT_NAMES[split]} do not fit "
                              f"--seq-length {seq_length} (chosen + rejected; longest {int(lengths.max())}); "
                              f"re-run tools/preprocess_dpo.py with --max-seq-length {seq_length}")
        if b <= a:
            raise ConfigError(f"--data-path {prefix}: split {SPLIT_NAMES[split]} holds no pairs")
        self.pairs = np.arange(a, b, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def pair_id(self, i: int) -> int:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.name}: sample {i} out of range {self.num_samples}")
        n = len(self.pairs)
        epoch, j = divmod(i, n)
        if not self.shuffle:
            return int(self.pairs[j])
        order = getattr(self, "_order", None)
        if order is None or order[0] != epoch:
            self._order = order = (epoch, _rng(self.seed, self.split, 4, epoch).permutation(self.pairs))
        return int(order[1][j])

    def one_epoch(self, group=None) -> "DPODataset":
        """Every pair of the split once (``--full-validation``)."""
        return DPODataset(self.prefix, self.split, self.doc_range, self.seq_length, self.seed, len(self.pairs),
                          self.pad_token_id, self.shuffle)

    def __getitem__(self, i: int) -> dict:
        pid = self.pair_id(i)
        s = self.seq_length
        out = {"tokens": np.full(s, self.pad_token_id, dtype=np.int64), "labels": np.zeros(s, dtype=np.int64),
               "position_ids": np.zeros(s, dtype=np.int64)}
        masks = {side: np.zeros(s, dtype=np.float32) for side in SIDES}
        cu, t = [0], 0
        for side in SIDES:
            tokens, mask = self.data[side]
            x, m = tokens.get(pid), mask.get(pid)
            n = len(x)
            out["tokens"][t:t + n] = x
            out["labels"][t:t + n - 1] = x[1:]
            masks[side][t:t + n - 1] = m[1:] != 0
            out["position_ids"][t:t + n] = np.arange(n)
            t += n
            cu.append(t)
        if t < s:
            out["position_ids"][t:] = np.arange(s - t)
            cu.append(s)
        out.update(loss_mask=masks["chosen"] + masks["rejected"], chosen_mask=masks["chosen"],
                   rejected_mask=masks["rejected"], cu_seqlens=np.asarray(cu, dtype=np.int32),
                   pair_id=np.int64(pid))
        return out


def collate(samples: list[dict]) -> dict:
    """SFT's collate (tokens, labels, loss_mask, position_ids [b, s]; flat cu_seqlens) plus
    chosen_mask, rejected_mask float32 [b, s] and pair_ids int64 [b]."""
    batch = sft_collate(samples)
    for k in ("chosen_mask", "rejected_mask"):
        batch[k] = torch.from_numpy(np.stack([x[k] for x in samples]))
    batch["pair_ids"] = torch.tensor([int(x["pair_id"]) for x in samples], dtype=torch.int64)
    return batch


def build_dpo_datasets(prefix: str, split: str, seq_length: int, seed: int, num_samples: dict[str, int],
                       pad_token_id: int = 0, log=print, cache_dir: str | None = None, group=None,
                       vocab_size: int | None = None, vocab_name: str = "the tokenizer") -> dict:
    """``{"train", "valid", "test"}`` DPODatasets split by pairs (gpt_dataset.split_ranges); a split
    asked for no samples, or without pairs (valid/test, noted through ``log``), is None."""
    try:
        parse_split(split)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data = open_dpo_data(prefix)
    if vocab_size is not None:
        for side in SIDES:
            tokens = data[side][0]
            check_vocabulary(tokens, token_range(tokens, cache_dir, group), vocab_size, vocab_name)
    ranges = split_ranges(len(data["chosen"][0]), split)
    out = {}
    for s, name in enumerate(SPLIT_NAMES):
        n = int(num_samples.get(name, 0))
        a, b = ranges[s]
        if n > 0 and b <= a:
            if s == 0:
                raise ConfigError(f"--split {split} leaves the train split no pairs of --data-path {prefix}")
            log(f"note: the {name} split of --split {split} gets no pairs; it is skipped")
            n = 0
        out[name] = DPODataset(prefix, s, ranges[s], seq_length, seed, n, pad_token_id) if n > 0 else None
    return out
