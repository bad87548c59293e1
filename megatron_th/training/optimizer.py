"""Mixed-precision optimizer: fp32 master weights, dynamic loss scaling (fp16), global-norm clipping,
Zero-1, the weight EMA (training/ema.py); the update rule is ``--optimizer``'s (training/optimizers:
AdamW by default, SGD, Adafactor, Muon).

- fp32: the optimizer updates the model parameters directly.
- bf16 / fp16: model parameters are 16-bit; each has an fp32 master copy that the rule updates and
  that is copied back after the step. Under fp16 the loss is multiplied by the loss scale before
  backward; gradients are unscaled into the masters; an overflow skips the step and (after
  ``--hysteresis`` overflows) halves the scale; ``--loss-scale-window`` clean steps double it.
- A non-finite gradient norm skips the step in every precision (counted by the caller).

Parallel layouts plug in through two hooks set from outside: ``reduce_sq_norm`` sums the squared
norm over the ranks that hold other parts of the model, and ``norm_weight[i]`` is 0 for a
parameter replica that another rank already counts.
"""
from __future__ import annotations

import contextlib
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
    def __init__(self, named_params, o, buffers=None, groups=None, model_cfg=None, zero1: bool = False):
        """named_params: [(logical name, parameter)] of this rank's model (chunks); ``o``: the
        OptimConfig (``o.optimizer`` picks the update rule, training/optimizers). Zero-1, two ways:
        with ``buffers`` (parallel/data_parallel.GradBuffers, reduce-scatter) the elementwise rules
        (adam, sgd) own their DP rank's part of each bucket; with ``zero1`` and ``groups`` the
        whole-matrix rules (adafactor, muon) own whole parameters (parallel/zero_params.py).
        Masters, optimizer state and the EMA (``o.ema_decay``) exist only for what is owned.
        ``groups`` also gives the TP group (Adafactor's statistics, Muon's gathers); ``model_cfg``
        the head layout Muon splits q, k, v by."""
        from megatron_th.training.optimizers import FLAT_SHARDED, make_rule

        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.buffers = buffers if (buffers is not None and buffers.zero1) else None
        self.kind = getattr(o, "optimizer", "adam")
        if self.buffers is not None and self.kind not in FLAT_SHARDED:
            raise ValueError(f"--optimizer {self.kind} reads whole matrices: Zero-1 by flat ranges cannot shard it "
                             "(make the GradBuffers with zero1=False and pass zero1=True; pretrain.make_grad_buffers)")
        self.owner = None
        if self.buffers is not None:
            from megatron_th.parallel.zero import owned_slots

            self.slots = owned_slots(self.params, self.buffers, Slot)
        elif zero1 and groups is not None and groups.dp > 1:
            from megatron_th.parallel.zero_params import WholeParamShards

            self.owner = WholeParamShards(self.params, groups)
            self.slots = [Slot(i, self.params[i]) for i in self.owner.owned]
        else:
            self.slots = [Slot(i, p) for i, p in enumerate(self.params)]
        self.clip = o.clip_grad
        self.rule = make_rule(o, self.slots, self.names, groups, model_cfg)
        self.opt = getattr(self.rule, "opt", None)  # the torch optimizer holding (part of) the state
        self.scaler = LossScaler(o.initial_loss_scale, o.min_loss_scale, o.loss_scale_window,
                                 o.hysteresis, dynamic=o.fp16)
        self.ema = None
        if getattr(o, "ema_decay", None) is not None:
            from megatron_th.training.ema import WeightEMA

            self.ema = WeightEMA(self.masters, o.ema_decay, o.ema_start_iter)
        self.norm_weight = [1.0] * len(self.params)
        self.reduce_sq_norm = lambda sq: sq
        self.num_steps = 0  # updates applied (the same on every rank)

    @property
    def masters(self):
        return [s.master for s in self.slots]

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    @property
    def state_on_every_dp_rank(self) -> bool:
        """Whether each DP rank writes the optimizer state it owns (Zero-1 by whole parameters);
        else DP rank 0 writes it all (training/resume.py save_state)."""
        return self.owner is not None

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

    def _gather_params(self, overlap: bool = False) -> None:
        """Zero-1: the owners' updated parameters -> every DP rank; with ``overlap`` (the step) and
        --overlap-param-gather, left in flight for the next forward (data_parallel.gather_params)."""
        if self.buffers is not None:
            self.buffers.gather_params(overlap)
        elif self.owner is not None:
            self.owner.gather_params()

    def finish_param_sync(self) -> None:
        """Complete the parameter all-gathers the last step left in flight (--overlap-param-gather);
        every DP rank must call it. Needed before the parameters are read or written outside a
        forward: the step, the EMA swap and the checkpoint view call it themselves."""
        if self.buffers is not None:
            self.buffers.finish_param_sync()

    @torch.no_grad()
    def step(self, lr: float) -> tuple[bool, float]:
        """Returns (stepped, grad_norm). A non-finite norm skips the update on every rank (and
        gathers nothing). Under Zero-1 the updated parameters are all-gathered over DP; with
        --overlap-param-gather that gather is still in flight on return (finish_param_sync)."""
        self.finish_param_sync()  # the update writes this rank's parts, which a pending gather reads
        self._gather_grads()
        norm = self.grad_norm()
        if not math.isfinite(norm):
            self.scaler.update(found_inf=True)
            self.zero_grad()
            return False, norm
        if self.clip > 0 and norm > self.clip and self.slots:
            torch._foreach_mul_([s.master.grad for s in self.slots], self.clip / (norm + 1e-6))
        self.rule.step(lr, self.num_steps + 1)
        for s in self.slots:
            s.write_back()
        self._gather_params(overlap=True)
        self.scaler.update(found_inf=False)
        self.zero_grad()
        self.num_steps += 1
        if self.ema is not None:
            self.ema.update(self.masters, self.num_steps)
        return True, norm

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside: the model's parameters hold the EMA weights (cast to their dtype; under Zero-1
        each owner's part, then gathered); afterwards exactly the weights they held before (a full
        copy of this rank's parameters is kept meanwhile). Every rank must enter it together."""
        if self.ema is None:
            raise RuntimeError("ema_weights() needs an EMA (--ema-decay)")
        self.finish_param_sync()  # the backup must hold the gathered weights
        backup = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for s, e in zip(self.slots, self.ema.tensors):
                    view = s.param.data if s.a is None else s.param.data.view(-1)[s.a:s.z]
                    view.copy_(e.view_as(view))
                self._gather_params()
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.data.copy_(b)

    # -- checkpoint view: logical name -> tensor of the parameter's (local) shape -----------------
    def _slot_kinds(self, s) -> dict:
        """{kind: Layout or None (the parameter's layout)} of every tensor slot ``s`` saves."""
        out = dict(self.rule.kinds(s))
        if s.param.dtype != torch.float32:
            out["master"] = None
        if self.ema is not None:
            out["ema"] = None
        return out

    def _whole_slots(self) -> list:
        """One slot per parameter this rank holds state for (the first, under flat Zero-1)."""
        seen, out = set(), []
        for s in self.slots:
            if s.index not in seen:
                seen.add(s.index)
                out.append(s)
        return out

    def state_keys(self) -> list[tuple[str, object]]:
        """(checkpoint key, parameter name or Layout) of every optimizer tensor this rank can hold."""
        return [(f"optim.{kind}.{self.names[s.index]}", layout or self.names[s.index])
                for s in self._whole_slots() for kind, layout in self._slot_kinds(s).items()]

    def flat_state_kinds(self) -> list[str]:
        """The kinds Zero-1 by flat ranges gathers (parallel/zero.py), the same on every rank:
        the rule's (after the first step), master (16-bit parameters), ema."""
        kinds = list(getattr(self.rule, "_kinds", ())) if self.num_steps else []
        if any(p.dtype != torch.float32 for p in self.params):
            kinds.append("master")
        return kinds + (["ema"] if self.ema is not None else [])

    def _slot_state(self, i: int, s) -> dict:
        """{kind: tensor} of slot ``i``: the rule's state, the fp32 master of a 16-bit parameter,
        the EMA."""
        st = self.rule.state(s)
        if s.param.dtype != torch.float32:
            st["master"] = s.master
        if self.ema is not None:
            st["ema"] = self.ema.tensors[i]
        return st

    def _slot_states(self):
        """{kind: [tensor per slot or None]} for the flat kinds (flat_state_kinds)."""
        out = {k: [] for k in self.flat_state_kinds()}
        for i, s in enumerate(self.slots):
            st = self._slot_state(i, s)
            for k in out:
                out[k].append(st.get(k))
        return out

    def state_tensors(self) -> list[tuple[str, torch.Tensor, object]]:
        """(checkpoint key, tensor, parameter name or Layout). Under flat Zero-1 this is collective
        over DP (the parts are all-gathered one bucket at a time, parallel/zero.py): every DP rank
        must call it; DP rank 0, which writes them, gets fp32 CPU tensors, the other DP ranks get
        []. Under Zero-1 by whole parameters each DP rank gets the state of what it owns.
        Pending parameter all-gathers are finished first (a save reads the parameters next)."""
        self.finish_param_sync()
        if self.buffers is not None:
            from megatron_th.parallel.zero import gather_full_states

            return gather_full_states(self, self._slot_states())
        by_kind: dict = {}
        for i, s in enumerate(self.slots):
            st = self._slot_state(i, s)
            n = self.names[s.index]
            for kind, layout in self._slot_kinds(s).items():
                if st.get(kind) is not None:
                    by_kind.setdefault(kind, []).append((f"optim.{kind}.{n}", st[kind], layout or n))
        return [e for entries in by_kind.values() for e in entries]

    def state_meta(self) -> dict:
        return {"step": self.num_steps, "loss_scaler": self.scaler.state_dict(), "optimizer": self.kind}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """tensors: full (local-shape) per-parameter states, as state_tensors gives them. Masters
        absent (e.g. saved in fp32) are rebuilt from the parameters; the rule's state starts fresh
        when absent (weights only) or saved by another --optimizer (``meta["optimizer"]``, adam
        when missing); an EMA absent starts as the weights.
        The rule loads its state through torch's ``load_state_dict`` where torch holds it
        (optimizers.TorchRule.load: state placement as torch's own)."""
        step = int(meta.get("step", 0))
        same_rule = meta.get("optimizer", "adam") == self.kind
        loaded = {}
        for i, s in enumerate(self.slots):
            n, p = self.names[s.index], s.param

            def part(t):
                t = t.to(p.device, torch.float32)
                return t.clone() if s.a is None else t.reshape(-1)[s.a:s.z].clone()

            if s.master is not p and p.dtype != torch.float32:
                key = f"optim.master.{n}"
                s.master.copy_(part(tensors[key]) if key in tensors else part(p.detach()))
            kinds = self.rule.kinds(s)
            if step > 0 and same_rule and kinds and all(f"optim.{k}.{n}" in tensors for k in kinds):
                loaded[id(s.master)] = {k: part(tensors[f"optim.{k}.{n}"]) if kinds[k] is None
                                        else tensors[f"optim.{k}.{n}"] for k in kinds}
            if self.ema is not None:
                key = f"optim.ema.{n}"
                self.ema.tensors[i].copy_(part(tensors[key]).view_as(s.master) if key in tensors else s.master)
        self.rule.load(loaded, step)
        self.scaler.load_state_dict(meta["loss_scaler"])
        self.num_steps = step
