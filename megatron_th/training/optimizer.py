"""Mixed-precision AdamW: fp32 master weights, dynamic loss scaling (fp16), global-norm clipping.

- fp32: the optimizer updates the model parameters directly.
- bf16 / fp16: model parameters are 16-bit; each has an fp32 master copy that AdamW updates and
  that is copied back after the step. Under fp16 the loss is multiplied by the loss scale before
  backward; gradients are unscaled into the masters; an overflow skips the step and (after
  ``--hysteresis`` overflows) halves the scale; ``--loss-scale-window`` clean steps double it.
- A non-finite gradient norm skips the step in every precision (counted by the caller).

Parallel layouts plug in through two hooks set from outside: ``reduce_sq_norm`` sums the squared
norm over the ranks that hold other parts of the model, and ``norm_weight[i]`` is 0 for a
parameter replica that another rank already counts.
"""
from __future__ import annotations

import math

import torch


class LossScaler:
    def __init__(self, initial: float = 2.0 ** 16, min_scale: float = 1.0, window: int = 1000,
                 hysteresis: int = 2, dynamic: bool = True):
        self.scale = float(initial) if dynamic else 1.0
        self.min_scale, self.window, self.hysteresis, self.dynamic = min_scale, window, hysteresis, dynamic
        self.growth_tracker, self.hysteresis_tracker = 0, hysteresis

    def update(self, found_inf: bool) -> None:
        if not self.dynamic:
            return
        if found_inf:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                self.scale = max(self.scale / 2.0, self.min_scale)
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.window:
                self.growth_tracker, self.hysteresis_tracker = 0, self.hysteresis
                self.scale *= 2.0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "hysteresis_tracker": self.hysteresis_tracker}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.growth_tracker, self.hysteresis_tracker = d["scale"], d["growth_tracker"], d["hysteresis_tracker"]


def _adamw(groups, o):
    kw = dict(betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kw)


class MixedPrecisionOptimizer:
    def __init__(self, named_params, o):
        """named_params: [(logical name, parameter)] of this rank's model (chunks)."""
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        self.clip = o.clip_grad
        decay = [m for p, m in zip(self.params, self.masters) if p.ndim >= 2]
        no_decay = [m for p, m in zip(self.params, self.masters) if p.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        self.opt = _adamw(groups, o)
        self.scaler = LossScaler(o.initial_loss_scale, o.min_loss_scale, o.loss_scale_window,
                                 o.hysteresis, dynamic=o.fp16)
        self.norm_weight = [1.0] * len(self.params)
        self.reduce_sq_norm = lambda sq: sq

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.masters:
            m.grad = None

    def _gather_grads(self) -> None:
        inv = 1.0 / self.scaler.scale
        for p, m in zip(self.params, self.masters):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            g = g.float() if m is not p else g
            if inv != 1.0:
                g = g * inv
            m.grad = g

    def grad_norm(self) -> float:
        grads = [m.grad for m in self.masters]
        # accumulate in fp64: an fp32 sum over millions of elements is off by ~1e-6 relative,
        # which is larger than the differences the parity tests must see
        try:
            norms = torch._foreach_norm(grads, 2, dtype=torch.float64) if grads else []
        except TypeError:  # older torch
            norms = [torch.linalg.vector_norm(g, 2, dtype=torch.float64) for g in grads]
        sq = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
        for w, n in zip(self.norm_weight, norms):
            if w:
                sq = sq + n.double() ** 2
        return math.sqrt(float(self.reduce_sq_norm(sq)))

    @torch.no_grad()
    def step(self, lr: float) -> tuple[bool, float]:
        """Returns (stepped, grad_norm). A non-finite norm skips the update."""
        self._gather_grads()
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.scaler.update(found_inf=True)
            self.zero_grad()
            return False, norm
        if self.clip > 0 and norm > self.clip:
            torch._foreach_mul_([m.grad for m in self.masters], self.clip / (norm + 1e-6))
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        for p, m in zip(self.params, self.masters):
            if m is not p:
                p.copy_(m)
        self.scaler.update(found_inf=False)
        self.zero_grad()
        return True, norm

    # -- checkpoint view: logical name -> tensor ------------------------------------------
    def state_keys(self) -> list[tuple[str, str]]:
        """(checkpoint key, parameter name) of every optimizer tensor this optimizer can hold."""
        out = []
        for n, p, m in zip(self.names, self.params, self.masters):
            out += [(f"optim.exp_avg.{n}", n), (f"optim.exp_avg_sq.{n}", n)]
            if m is not p:
                out.append((f"optim.master.{n}", n))
        return out

    def state_tensors(self) -> list[tuple[str, torch.Tensor, str]]:
        """(checkpoint key, tensor, parameter name); tensors have their parameter's shape."""
        out = []
        for n, p, m in zip(self.names, self.params, self.masters):
            st = self.opt.state.get(m, {})
            if "exp_avg" in st:
                out += [(f"optim.exp_avg.{n}", st["exp_avg"], n), (f"optim.exp_avg_sq.{n}", st["exp_avg_sq"], n)]
            if m is not p:
                out.append((f"optim.master.{n}", m, n))
        return out

    def state_meta(self) -> dict:
        steps = [int(st["step"]) for st in self.opt.state.values() if "step" in st]
        return {"step": steps[0] if steps else 0, "loss_scaler": self.scaler.state_dict()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """tensors as from state_tensors (masters optional: rebuilt from params when absent)."""
        for n, p, m in zip(self.names, self.params, self.masters):
            if m is not p:
                m.copy_(tensors.get(f"optim.master.{n}", p.float()))
            if meta.get("step", 0) > 0 and f"optim.exp_avg.{n}" in tensors:
                self.opt.state[m] = {
                    "step": torch.tensor(float(meta["step"])),
                    "exp_avg": tensors[f"optim.exp_avg.{n}"].to(m.device, torch.float32).clone(),
                    "exp_avg_sq": tensors[f"optim.exp_avg_sq.{n}"].to(m.device, torch.float32).clone(),
                }
        self.scaler.load_state_dict(meta["loss_scaler"])
