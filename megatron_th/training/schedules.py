"""Learning-rate schedules: warmup, then constant / linear / cosine / WSD / inverse-square-root.

``lr_at(it)`` is the LR of optimizer step ``it`` (1-based). Warmup rises linearly and reaches
``--lr`` at step ``--lr-warmup-iters`` (no step runs at LR 0). The decay spans steps
``(warmup, --lr-decay-iters]`` and depends on ``--lr-decay-iters``, never on ``--train-iters``, so
a run resumed with a larger ``--train-iters`` follows the very same curve. Past the decay: --min-lr.
WSD holds --lr until the last ``--lr-wsd-decay-iters`` steps of the decay span (default 10%), then
decays linearly to --min-lr.
"""
from __future__ import annotations

import math


class LRSchedule:
    def __init__(self, lr: float, min_lr: float, style: str, warmup: int, decay_iters: int,
                 wsd_decay_iters: int | None = None):
        if style not in ("constant", "linear", "cosine", "WSD", "inverse-square-root"):
            raise ValueError(f"--lr-decay-style {style!r} is not supported")
        self.lr, self.min_lr, self.style, self.warmup = lr, min_lr, style, warmup
        self.decay_iters = max(decay_iters, warmup)
        span = self.decay_iters - warmup
        self.wsd_decay = wsd_decay_iters if wsd_decay_iters is not None else max(int(0.1 * span), 1)

    @classmethod
    def from_config(cls, o) -> "LRSchedule":
        return cls(o.lr, o.min_lr, o.lr_decay_style, o.lr_warmup_iters, o.lr_decay_iters, o.lr_wsd_decay_iters)

    def lr_at(self, it: int) -> float:
        if self.warmup > 0 and it <= self.warmup:
            return self.lr * it / self.warmup
        if self.style == "constant":
            return self.lr
        if self.style == "inverse-square-root":
            return max(self.min_lr, self.lr * math.sqrt(max(self.warmup, 1)) / math.sqrt(max(it, 1)))
        if it > self.decay_iters:
            return self.min_lr
        span = self.decay_iters - self.warmup
        ratio = (it - self.warmup) / span if span > 0 else 1.0
        delta = self.lr - self.min_lr
        if self.style == "linear":
            return self.min_lr + delta * (1.0 - ratio)
        if self.style == "cosine":
            return self.min_lr + delta * 0.5 * (1.0 + math.cos(math.pi * ratio))
        start = self.decay_iters - self.wsd_decay  # WSD
        if it <= start:
            return self.lr
        return self.min_lr + delta * (1.0 - (it - start) / self.wsd_decay)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("lr", "min_lr", "style", "warmup", "decay_iters", "wsd_decay")}
