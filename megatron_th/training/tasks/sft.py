"""Supervised fine-tuning: packed conversations, loss on assistant tokens only.

Data: one prefix written by tools/preprocess_sft.py, packed best-fit-decreasing into sequences
(data/sft_dataset.py); each conversation attends only to itself (its own ``cu_seqlens`` segment)
with positions restarting at 0, and no loss falls on prompts, padding or a conversation's first
token.

``--sft-loss-normalization``:

- ``token`` (default): the mean over every loss token of the global batch, so the gradient is the
  same for any micro-batch size, gradient accumulation and DP split (Megatron's
  ``--calculate-per-token-loss``; TRL's default for packed SFT).
- ``conversation``: each conversation's mean token loss, then the mean over the global batch's
  conversations (those with at least one loss token): token t of conversation c weighs
  ``1 / n_c``, and the global normalizer is the number of conversations. Also independent of the
  split, since every conversation sits whole in one micro-batch.
"""
from __future__ import annotations

import torch

from megatron_th.config import ConfigError
from megatron_th.data.sft_dataset import build_sft_datasets, collate
from megatron_th.training.tasks.base import CollatedSamples, pad_token
from megatron_th.training.tasks.lm import LanguageModelTask, sample_counts


def conversation_weights(mb: dict) -> tuple[torch.Tensor, int]:
    """(per-token weights [b, s] float32, number of conversations with loss tokens) for
    ``conversation`` normalisation, from the micro-batch's CPU ``loss_mask`` and ``cu_seqlens``
    (flattened THD boundaries; each segment one conversation or one padding run)."""
    mask = mb["loss_mask"].reshape(-1).double()
    cu = mb["cu_seqlens"].long()
    seg = torch.searchsorted(cu, torch.arange(mask.numel()), right=True) - 1
    counts = torch.zeros(len(cu) - 1, dtype=torch.float64).index_add_(0, seg, mask)
    weights = mask / counts[seg].clamp(min=1.0)
    return weights.float().view(mb["loss_mask"].shape), int((counts > 0).sum())


class SFTTask(CollatedSamples, LanguageModelTask):
    name = "sft"
    collate = staticmethod(collate)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.normalization = cfg.train.sft_loss_normalization
        self.record = {"loss_normalization": self.normalization}

    def setup_data(self, cfg, tokenizer, vocab_size, log, resumed, group) -> dict:
        d = cfg.data
        if len(d.data_path) != 1:
            raise ConfigError(f"--sft takes one --data-path PREFIX (tools/preprocess_sft.py output), got "
                              f"{' '.join(d.data_path) or 'none'}")
        name = f"--tokenizer-model {d.tokenizer_model}" if d.tokenizer_model else "the default tokenizer"
        return build_sft_datasets(d.data_path[0], d.split, cfg.model.seq_length, cfg.train.seed,
                                  sample_counts(cfg, resumed), pad_token_id=pad_token(tokenizer), cache_dir=d.data_cache_path,
                                  log=log, group=group, vocab_size=vocab_size, vocab_name=name)

    def _weights(self, mb: dict) -> tuple[torch.Tensor, int]:
        if "loss_weights" not in mb:
            mb["loss_weights"], mb["num_conversations"] = conversation_weights(mb)
        return mb["loss_weights"], mb["num_conversations"]

    def loss(self, per_token, mb):
        if self.normalization == "token":
            return super().loss(per_token, mb)
        weights, _ = self._weights(mb)
        loss = (per_token * weights.to(per_token.device)).sum()
        return loss, loss.detach().double().reshape(1)

    def normalizer(self, mb) -> float:
        if self.normalization == "token":
            return super().normalizer(mb)
        return float(self._weights(mb)[1])
