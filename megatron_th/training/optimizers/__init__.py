"""The update rules behind ``--optimizer`` (training/optimizer.py MixedPrecisionOptimizer).

MixedPrecisionOptimizer owns what every optimizer shares (fp32 masters, loss scaling, clipping,
Zero-1, the EMA, checkpoints); a rule owns the update and its state:

- ``adam``: torch.optim.AdamW (fused where available). State exp_avg, exp_avg_sq (8 B/param).
- ``sgd``: torch.optim.SGD with ``--sgd-momentum`` (L2 weight decay, as torch and Megatron).
  State momentum_buffer (4 B/param; none without momentum).
- ``adafactor``: optimizers/adafactor.py, torch.optim.Adafactor's update computed over each
  logical tensor under TP. State: row and column second-moment factors of a matrix, a full
  second moment of a vector (about 0 B/param for the matrices).
- ``muon``: optimizers/muon.py, Newton-Schulz orthogonalised momentum for the transformer layers'
  matrices (momentum_buffer, 4 B/param), AdamW for embeddings, output layer, norms and biases.

Adam and SGD are elementwise, so Zero-1 may cut their parameters anywhere (parallel/zero.py);
Adafactor and Muon read whole matrices, so under Zero-1 each parameter belongs to one DP rank
(parallel/zero_params.py). Checkpoint keys are ``optim.<kind>.<parameter name>``.
"""
from __future__ import annotations

import torch

FLAT_SHARDED = ("adam", "sgd")  # elementwise updates: Zero-1 shards them by flat bucket ranges


class Layout:
    """Shape and TP split of a checkpoint tensor that is not shaped like its parameter (a factored
    Adafactor statistic): what training/resume.py reads from a parameter (``shape``, ``tp_dim``,
    ``tp_chunks``) to write and read the logical tensor at any TP size."""

    def __init__(self, shape, tp_dim: int | None = None, tp_chunks: int = 1):
        self.shape, self.tp_dim, self.tp_chunks = torch.Size(shape), tp_dim, tp_chunks


def decay_groups(slots, weight_decay: float) -> list[dict]:
    """torch param groups over the slots' masters: matrices decay, vectors (norms, biases) do not."""
    decay = [s.master for s in slots if s.param.ndim >= 2]
    no_decay = [s.master for s in slots if s.param.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


def _adamw(groups, o):
    kw = dict(betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kw)


class TorchRule:
    """A torch optimizer over the slots' masters whose per-parameter state entries ``kinds`` are
    elementwise (shaped like the master): AdamW, SGD. The interface every rule has: ``kinds(slot)``
    (what a slot saves), ``state(slot)`` (those tensors now), ``step(lr, t)``, ``load(loaded,
    step)``, ``storages()`` (every state tensor, for memory accounting)."""

    elementwise = True

    def __init__(self, slots, torch_opt, kinds: tuple, with_step: bool):
        self.slots, self.opt, self._kinds, self.with_step = slots, torch_opt, kinds, with_step

    def kinds(self, slot) -> dict:
        """{kind: Layout or None (the parameter's own layout)} this slot saves."""
        return dict.fromkeys(self._kinds)

    def state(self, slot) -> dict:
        st = self.opt.state.get(slot.master, {}) if self.opt is not None else {}
        return {k: st[k] for k in self._kinds if st.get(k) is not None}

    def step(self, lr: float, t: int) -> None:
        if self.opt is None:
            return
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()

    def load(self, loaded: dict, step: int) -> None:
        """``loaded``: {id(master): {kind: tensor}}. Through torch's own ``load_state_dict``, so
        every entry lands where torch puts it: state on the master's device and dtype, AdamW's
        ``step`` on the parameter's device for fused / capturable AdamW (the fused CUDA kernel
        reads it there) and on the CPU otherwise (torch/optim/optimizer.py
        ``_process_value_according_to_param_policy``)."""
        if self.opt is None or not loaded:
            return
        order = [q for g in self.opt.param_groups for q in g["params"]]
        sd = self.opt.state_dict()
        sd["state"] = {i: dict(loaded[id(q)], **({"step": torch.tensor(float(step))} if self.with_step else {}))
                       for i, q in enumerate(order) if id(q) in loaded}
        self.opt.load_state_dict(sd)

    def storages(self) -> list:
        return [t for s in self.slots for t in self.state(s).values()]


def make_rule(o, slots, names, groups=None, model_cfg=None):
    """The update rule ``o.optimizer`` names over ``slots`` (training/optimizer.py Slot).
    ``names[slot.index]``: the parameter's logical name; ``groups``: ParallelGroups (TP statistics
    and gathers; None: one process); ``model_cfg``: the ModelConfig (Muon's q/k/v split)."""
    kind = getattr(o, "optimizer", "adam")
    if kind == "adam":
        groups_ = decay_groups(slots, o.weight_decay)
        return TorchRule(slots, _adamw(groups_, o) if groups_ else None, ("exp_avg", "exp_avg_sq"), True)
    if kind == "sgd":
        groups_ = decay_groups(slots, o.weight_decay)
        opt = torch.optim.SGD(groups_, lr=0.0, momentum=o.sgd_momentum) if groups_ else None
        return TorchRule(slots, opt, ("momentum_buffer",) if o.sgd_momentum else (), False)
    if kind == "adafactor":
        from megatron_th.training.optimizers.adafactor import Adafactor

        return Adafactor(slots, o, groups)
    if kind == "muon":
        from megatron_th.training.optimizers.muon import Muon

        return Muon(slots, names, o, groups, model_cfg)
    raise ValueError(f"--optimizer {kind!r}: expected adam, sgd, adafactor or muon")
