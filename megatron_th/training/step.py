"""One optimizer step's forward and backward over the micro-batches (no pipelining).

The loss is the mean per-token loss over the WHOLE global batch: every micro-batch's summed loss
is divided by the global count of loss tokens before backward, so gradients do not depend on how
the batch is split into micro-batches or data-parallel ranks. Pipeline schedules replace this.
"""
from __future__ import annotations

import torch


def model_inputs(mb: dict, device) -> dict:
    keys = ("tokens", "position_ids", "labels", "cu_seqlens")
    return {k: mb[k].to(device, non_blocking=True) for k in keys if k in mb}


def count_loss_tokens(micro_batches: list[dict]) -> torch.Tensor:
    return sum(mb["loss_mask"].sum(dtype=torch.float64) for mb in micro_batches)


def forward_backward(model, micro_batches: list[dict], num_tokens: float, loss_scale: float, device) -> torch.Tensor:
    """Runs forward+backward on every micro-batch; returns the summed (unscaled) masked loss."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for mb in micro_batches:
        per_token = model(**model_inputs(mb, device))
        loss = (per_token * mb["loss_mask"].to(device)).sum()
        (loss * (loss_scale / num_tokens)).backward()
        total += loss.detach().double()
    return total


@torch.no_grad()
def forward_only(model, micro_batches: list[dict], device) -> list[torch.Tensor]:
    """Per-sample (summed loss, loss tokens) for evaluation: list of [mbs, 2] tensors."""
    out = []
    for mb in micro_batches:
        per_token = model(**model_inputs(mb, device)).double()
        mask = mb["loss_mask"].to(device).double()
        out.append(torch.stack([(per_token * mask).sum(1), mask.sum(1)], dim=1))
    return out
