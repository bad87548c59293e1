"""Language-model pretraining: next-token loss over packed GPT samples (the default task).

The loss of a global batch is the mean per-token loss over all its loss tokens (``loss_mask``),
every micro-batch's summed masked loss divided by the global count (Megatron's
``--calculate-per-token-loss`` semantics), so gradients do not depend on how the batch is split.
"""
from __future__ import annotations

import math

import torch

from megatron_th.data.gpt_dataset import BlendedDataset, build_datasets
from megatron_th.data.loader import FullPassLoader, PretrainingLoader
from megatron_th.data.packing import make_batch
from megatron_th.training.tasks.base import Task


def sample_counts(cfg, resumed: dict | None) -> dict:
    """Samples each split must hold: the train split holds those already consumed plus those the
    remaining iterations take at the current global batch size (Megatron allows changing it on
    resume; the sample order does not depend on it: docs/data.md); valid: what --eval-iters
    global batches take (one sample at least with --full-validation, which reads one epoch)."""
    d, t = cfg.data, cfg.train
    done = resumed or {}
    evals = bool(t.eval_interval) or getattr(t, "skip_train", False)
    valid = t.eval_iters * d.global_batch_size if evals else 0
    if evals and getattr(t, "full_validation", False):
        valid = max(valid, 1)
    train = 0 if getattr(t, "skip_train", False) else (
        int(done.get("consumed_samples", 0)) + max(t.train_iters - int(done.get("iteration", 0)), 0)
        * d.global_batch_size)
    return {"train": train, "valid": valid}


class LanguageModelTask(Task):
    name = "pretrain"
    record = {}

    def setup_data(self, cfg, tokenizer, vocab_size, log, resumed, group) -> dict:
        from megatron_th.data.embedded import embedded_data_path

        d, t = cfg.data, cfg.train
        data_path = d.data_path or embedded_data_path(log=log, group=group)
        tok = d.tokenizer_model
        return build_datasets(data_path, d.split, cfg.model.seq_length, t.seed, sample_counts(cfg, resumed),
                              d.data_cache_path, log=log, group=group, vocab_size=vocab_size,
                              vocab_name=f"--tokenizer-model {tok}" if tok else "the default tokenizer")

    def _pack(self, tokenizer) -> dict:
        d = self.cfg.data
        return dict(eod=tokenizer.eod, reset_position_ids=d.reset_position_ids,
                    reset_attention_mask=d.reset_attention_mask, eod_mask_loss=d.eod_mask_loss)

    def loader(self, cfg, dataset, tokenizer, consumed=0, dp_rank=0, dp_size=1):
        d = cfg.data
        return PretrainingLoader(dataset, d.global_batch_size, d.micro_batch_size, tokenizer.eod, dp_rank, dp_size,
                                 consumed, d.reset_position_ids, d.reset_attention_mask, d.eod_mask_loss)

    def full_pass_loader(self, cfg, dataset, tokenizer, dp_rank=0, dp_size=1, group=None):
        parts = dataset.datasets if isinstance(dataset, BlendedDataset) else [dataset]
        pack = self._pack(tokenizer)

        def collate(samples):
            import numpy as np
            return make_batch(np.stack(samples), **pack)
        loader = FullPassLoader([p.one_epoch(group) for p in parts], cfg.data.global_batch_size,
                                cfg.data.micro_batch_size, collate, dp_rank, dp_size)
        loader.names = [p.name for p in parts]
        return loader

    def loss(self, per_token, mb):
        loss = (per_token * mb["loss_mask"].to(per_token.device)).sum()
        return loss, loss.detach().double().reshape(1)

    def normalizer(self, mb) -> float:
        return float(mb["loss_mask"].sum(dtype=torch.float64))

    def eval_stats(self, per_token, mb):
        mask = mb["loss_mask"].to(per_token.device).double()
        return torch.stack([(per_token.double() * mask).sum(1), mask.sum(1)], dim=1)

    def eval_metrics(self, sums) -> dict:
        loss = sums[0] / max(sums[1], 1.0)
        return {"lm_loss": loss, "ppl": math.exp(min(loss, 50.0))}
