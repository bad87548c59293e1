"""The seam between the training loop and an objective.

Every method is called with host-side micro-batch dicts (CPU tensors from the loader) and, for
the loss, the model's per-token output on the device. Contract:

- ``loss(per_token, mb) -> (loss, stats)``: ``loss`` a 0-d tensor on the device, the micro-batch's
  SUMMED loss; the loop backpropagates ``loss * loss_scale / N`` where ``N`` is the sum of
  ``normalizer(mb)`` over the whole global batch (every micro-batch on every DP rank). So the
  gradient is the same for any micro-batch size, accumulation and DP split. ``stats``: a 1-D
  float64 tensor of detached sums (element 0 is ``loss``), summed by the loop over micro-batches,
  pipeline stages and DP ranks, and turned into logged metrics by ``train_metrics(stats, N)``.
- ``normalizer(mb) -> float``: host-side (no device sync), from the micro-batch's CPU tensors;
  ``begin_step(micro_batches, all_reduce)`` sums it over the global batch before the step (a task
  needing more global counts, e.g. DPO's RPO term, overrides it).
- ``eval_stats(per_token, mb) -> [b, k]`` float64 per-sample sums, summed by evaluation (per data
  source when the split blends several) and summarised by ``eval_metrics(sums)``.
- ``record``: fields added to every metrics.jsonl record of the run.
"""
from __future__ import annotations

import torch


class Task:
    """Base class; subclasses implement the data and loss methods (see the module docstring)."""

    name = "task"
    loss_name = "lm_loss"  # the headline metric's key in metrics.jsonl
    record: dict = {}
    stat_names: tuple[str, ...] = ("loss",)

    def __init__(self, cfg):
        self.cfg = cfg

    def setup_data(self, cfg, tokenizer, vocab_size: int, log, resumed: dict | None, group) -> dict:
        """``{"train": ds, "valid": ds | None, "test": ds | None}``."""
        raise NotImplementedError

    def loader(self, cfg, dataset, tokenizer, consumed: int = 0, dp_rank: int = 0, dp_size: int = 1):
        """An object with ``next_global_batch() -> list[dict]``, ``rank_sample_ids(consumed)``,
        ``consumed_samples`` and ``has_next()`` (data/loader.py PretrainingLoader's interface)."""
        raise NotImplementedError

    def full_pass_loader(self, cfg, dataset, tokenizer, dp_rank: int = 0, dp_size: int = 1):
        """A loader visiting every sample of ``dataset`` once (``--full-validation``); the last
        global batch is padded with samples whose loss counts nothing."""
        raise NotImplementedError

    def loss(self, per_token: torch.Tensor, mb: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def normalizer(self, mb: dict) -> float:
        raise NotImplementedError

    def begin_step(self, micro_batches: list[dict], all_reduce) -> float:
        """The global batch's normalizer N: ``all_reduce(list of floats) -> list`` sums over DP."""
        return all_reduce([sum(self.normalizer(mb) for mb in micro_batches)])[0]

    def train_metrics(self, stats: list[float], normalizer: float) -> dict:
        """The logged training metrics of one step from the summed ``stats``."""
        return {"lm_loss": stats[0] / max(normalizer, 1.0)}

    def eval_stats(self, per_token: torch.Tensor, mb: dict) -> torch.Tensor:
        raise NotImplementedError

    def eval_metrics(self, sums: list[float]) -> dict:
        raise NotImplementedError


def pad_token(tokenizer) -> int:
    """The id that fills a packed row after its last sequence: the tokenizer's pad, else its EOD
    (never attended to nor trained on, only a valid id)."""
    pad = getattr(tokenizer, "pad", None)
    return pad if pad is not None and pad >= 0 else tokenizer.eod


class CollatedSamples:
    """Mixin for tasks whose datasets return dict samples that ``collate`` (a staticmethod: list of
    samples -> micro-batch dict) batches, SFT's and DPO's: the loaders of the Task interface."""

    collate = None

    def loader(self, cfg, dataset, tokenizer, consumed=0, dp_rank=0, dp_size=1):
        from megatron_th.data.loader import PretrainingLoader

        d = cfg.data
        return PretrainingLoader(dataset, d.global_batch_size, d.micro_batch_size, tokenizer.eod, dp_rank, dp_size,
                                 consumed, collate=self.collate)

    def full_pass_loader(self, cfg, dataset, tokenizer, dp_rank=0, dp_size=1, group=None):
        from megatron_th.data.loader import FullPassLoader

        loader = FullPassLoader([dataset.one_epoch(group)], cfg.data.global_batch_size, cfg.data.micro_batch_size,
                                self.collate, dp_rank, dp_size)
        loader.names = [dataset.name]
        return loader
