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


class Slot:
    """A piece of one parameter that this rank updates: the whole parameter, or under Zero-1 the
    flat range [a, z) of it inside this DP rank's part of a bucket."""

    def __init__(self, index: int, param, a: int | None = None, z: int | None = None):
        self.index, self.param, self.a, self.z = index, param, a, z
        flat = param.detach().view(-1)
        whole = a is None
        if param.dtype == torch.float32:  # fp32: the parameter itself is the master (no copy)
            self.master = param if whole else flat[a:z]
        else:
            self.master = (param.detach() if whole else flat[a:z]).float().clone()

    def grad(self) -> torch.Tensor:
        p = self.param
        g = getattr(p, "main_grad", None)
        if g is None:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
        return g if self.a is None else g.reshape(-1)[self.a:self.z]

    def write_back(self) -> None:
        if self.master is self.param:
            return
        if self.a is None:
            self.param.data.copy_(self.master)
        elif self.param.dtype != torch.float32:
            self.param.data.view(-1)[self.a:self.z].copy_(self.master)


class MixedPrecisionOptimizer:
    def __init__(self, named_params, o, buffers=None):
        """named_params: [(logical name, parameter)] of this rank's model (chunks). With Zero-1
        ``buffers`` (parallel/data_parallel.GradBuffers) says which part of each bucket this DP
        rank owns; masters and moments then exist only for that part."""
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.buffers = buffers if (buffers is not None and buffers.zero1) else None
        if self.buffers is None:
            self.slots = [Slot(i, p) for i, p in enumerate(self.params)]
        else:
            from megatron_th.parallel.zero import owned_slots

            self.slots = owned_slots(self.params, self.buffers, Slot)
        self.clip = o.clip_grad
        decay = [s.master for s in self.slots if s.param.ndim >= 2]
        no_decay = [s.master for s in self.slots if s.param.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        self.opt = _adamw(groups, o) if groups else None
        self.scaler = LossScaler(o.initial_loss_scale, o.min_loss_scale, o.loss_scale_window,
                                 o.hysteresis, dynamic=o.fp16)
        self.norm_weight = [1.0] * len(self.params)
        self.reduce_sq_norm = lambda sq: sq
        self.num_steps = 0  # updates applied (the same on every rank)

    @property
    def masters(self):
        return [s.master for s in self.slots]

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for s in self.slots:
            s.master.grad = None

    def _gather_grads(self) -> None:
        inv = 1.0 / self.scaler.scale
        for s in self.slots:
            g = s.grad()
            g = g.float() if g.dtype != torch.float32 else g
            s.master.grad = g * inv if inv != 1.0 else g

    def grad_norm(self) -> float:
        grads = [s.master.grad for s in self.slots]
        # accumulate in fp64: an fp32 sum over millions of elements is off by ~1e-6 relative,
        # which is larger than the differences the parity tests must see
        try:
            norms = torch._foreach_norm(grads, 2, dtype=torch.float64) if grads else []
        except TypeError:  # older torch
            norms = [torch.linalg.vector_norm(g, 2, dtype=torch.float64) for g in grads]
        device = self.params[0].device if self.params else "cpu"
        sq = torch.zeros((), dtype=torch.float64, device=device)
        for s, n in zip(self.slots, norms):
            if self.norm_weight[s.index]:
                sq = sq + n.double() ** 2
        return math.sqrt(float(self.reduce_sq_norm(sq)))

    @torch.no_grad()
    def step(self, lr: float) -> tuple[bool, float]:
        """Returns (stepped, grad_norm). A non-finite norm skips the update on every rank."""
        self._gather_grads()
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.scaler.update(found_inf=True)
            self.zero_grad()
            return False, norm
        if self.clip > 0 and norm > self.clip:
            torch._foreach_mul_([s.master.grad for s in self.slots], self.clip / (norm + 1e-6))
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
        for s in self.slots:
            s.write_back()
        if self.buffers is not None:
            self.buffers.gather_params()
        self.scaler.update(found_inf=False)
        self.zero_grad()
        self.num_steps += 1
        return True, norm

    # -- checkpoint view: logical name -> tensor of the parameter's (local) shape -----------------
    def state_keys(self) -> list[tuple[str, str]]:
        """(checkpoint key, parameter name) of every optimizer tensor this optimizer can hold."""
        out = []
        for n, p in zip(self.names, self.params):
            out += [(f"optim.exp_avg.{n}", n), (f"optim.exp_avg_sq.{n}", n)]
            if p.dtype != torch.float32:
                out.append((f"optim.master.{n}", n))
        return out

    def _slot_states(self):
        """{kind: [tensor per slot or None]} for exp_avg, exp_avg_sq, master."""
        out = {"exp_avg": [], "exp_avg_sq": [], "master": []}
        for s in self.slots:
            st = self.opt.state.get(s.master, {}) if self.opt else {}
            out["exp_avg"].append(st.get("exp_avg"))
            out["exp_avg_sq"].append(st.get("exp_avg_sq"))
            out["master"].append(s.master if s.param.dtype != torch.float32 else None)
        return out

    def state_tensors(self) -> list[tuple[str, torch.Tensor, str]]:
        """(checkpoint key, tensor, parameter name). Under Zero-1 this is collective over DP (the
        parts are all-gathered one bucket at a time, parallel/zero.py): every DP rank must call
        it; DP rank 0, which writes them, gets fp32 CPU tensors, the other DP ranks get []."""
        states = self._slot_states()
        if self.buffers is not None:
            from megatron_th.parallel.zero import gather_full_states

            return gather_full_states(self, states)
        out = []
        for kind, tensors in states.items():
            for s, t in zip(self.slots, tensors):
                if t is not None:
                    out.append((f"optim.{kind}.{self.names[s.index]}", t, self.names[s.index]))
        return out

    def state_meta(self) -> dict:
        return {"step": self.num_steps, "loss_scaler": self.scaler.state_dict()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """tensors: full (local-shape) per-parameter states, as state_tensors gives them. Masters
        absent (e.g. saved in fp32) are rebuilt from the parameters; moments absent stay fresh.

        The moments and ``step`` go in through torch's own ``Optimizer.load_state_dict``, so every
        state entry lands where torch puts it: moments on the master's device and dtype, ``step``
        on the parameter's device for fused / capturable AdamW (the fused CUDA kernel reads it
        there; a CPU ``step`` beside CUDA parameters fails at the first resumed step) and on the
        CPU otherwise (torch/optim/optimizer.py ``_process_value_according_to_param_policy``)."""
        step = int(meta.get("step", 0))
        loaded = {}
        for s in self.slots:
            n, p = self.names[s.index], s.param

            def part(t):
                t = t.to(p.device, torch.float32)
                return t.clone() if s.a is None else t.reshape(-1)[s.a:s.z].clone()

            if s.master is not p and p.dtype != torch.float32:
                key = f"optim.master.{n}"
                s.master.copy_(part(tensors[key]) if key in tensors else part(p.detach()))
            if step > 0 and f"optim.exp_avg.{n}" in tensors and self.opt is not None:
                loaded[id(s.master)] = {"step": torch.tensor(float(step)),
                                        "exp_avg": part(tensors[f"optim.exp_avg.{n}"]),
                                        "exp_avg_sq": part(tensors[f"optim.exp_avg_sq.{n}"])}
        if loaded:
            order = [q for g in self.opt.param_groups for q in g["params"]]
            sd = self.opt.state_dict()
            sd["state"] = {i: loaded[id(q)] for i, q in enumerate(order) if id(q) in loaded}
            self.opt.load_state_dict(sd)
        self.scaler.load_state_dict(meta["loss_scaler"])
        self.num_steps = step
