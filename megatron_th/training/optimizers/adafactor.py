"""Adafactor (``--optimizer adafactor``): torch.optim.Adafactor's update, with every statistic taken
over the logical tensor, so serial, TP and Zero-1 runs make the same update.

The update of torch/optim/_adafactor.py ``_single_tensor_adafactor`` (Shazeer & Stern 2018,
"Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", Alg. 4 and 5 without beta1), for
a parameter P with gradient G at step t:

    1 - beta2_t = t ^ beta2_decay;  rho_t = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(P)) * rho_t
    P <- P * (1 - lr * weight_decay)
    matrix  [R, C]: r <- lerp(r, mean_cols(G^2), 1 - beta2_t)   [R, 1]
                    c <- lerp(c, mean_rows(G^2), 1 - beta2_t)   [1, C]
                    V = r c / mean(r)
    vector:         V <- lerp(V, G^2, 1 - beta2_t)
    U = G / sqrt(max(V, eps1^2));  P <- P - alpha / max(1, RMS(U) / d) * U

Under TP a parameter is split along ``tp_dim``: the column means of a row-split matrix, the row
means of a column-split one, mean(r), RMS(P) and RMS(U) are sums over the shards, taken with one
flat all-reduce over TP before the update and one for RMS(U); the rest is local. Every scalar stays
a device tensor (no host sync per parameter). Matrices decay, vectors do not (as our AdamW).
"""
from __future__ import annotations

import math

import torch

from megatron_th.parallel import comm
from megatron_th.training.optimizers import Layout


class Adafactor:
    """The rule over ``slots`` (training/optimizer.py Slot, whole parameters: Zero-1 shards this rule
    by parameter). ``o``: OptimConfig (adafactor_*, weight_decay); ``groups``: ParallelGroups for
    the TP sums (None: one process). State per slot, fp32 on the master's device: ``row_var``
    [R, 1] and ``col_var`` [1, C] of a matrix's local shard, ``variance`` of a vector."""

    elementwise = False

    def __init__(self, slots, o, groups=None):
        self.slots = slots
        self.group = groups.tp_group if groups is not None and groups.tp > 1 else None
        self.tp = groups.tp if self.group is not None else 1
        self.beta2_decay, self.eps2, self.d = o.adafactor_beta2_decay, o.adafactor_eps2, o.adafactor_d
        self.eps1 = o.adafactor_eps1 if o.adafactor_eps1 is not None else torch.finfo(torch.float32).eps
        self.decay = [o.weight_decay if s.param.ndim >= 2 else 0.0 for s in slots]
        self.st: dict = {}  # id(master) -> {"row_var", "col_var"} or {"variance"}

    def _split(self, s) -> int | None:
        """The dimension of the logical tensor this rank holds a part of (None: all of it)."""
        return getattr(s.param, "tp_dim", None) if self.tp > 1 else None

    def kinds(self, s) -> dict:
        if s.master.dim() < 2:
            return {"variance": None}
        dim, chunks = self._split(s), getattr(s.param, "tp_chunks", 1)
        r, c = s.master.shape
        return {"row_var": Layout((r, 1), 0 if dim == 0 else None, chunks if dim == 0 else 1),
                "col_var": Layout((1, c), 1 if dim == 1 else None)}

    def state(self, s) -> dict:
        return dict(self.st.get(id(s.master), {}))

    def _init(self, s) -> dict:
        st = self.st.get(id(s.master))
        if st is None:
            m = s.master
            st = ({"row_var": m.new_zeros(m.shape[0], 1), "col_var": m.new_zeros(1, m.shape[1])} if m.dim() >= 2
                  else {"variance": torch.zeros_like(m)})
            self.st[id(s.master)] = st
        return st

    def _all_reduce(self, parts: list) -> list:
        """Sums each tensor of ``parts`` over TP with one flat all-reduce."""
        if self.group is None or not parts:
            return parts
        flat = torch.cat([t.reshape(-1) for t in parts])
        comm.all_reduce(flat, self.group)
        out, off = [], 0
        for t in parts:
            out.append(flat[off:off + t.numel()].view_as(t))
            off += t.numel()
        return out

    def _sums(self, plans: list, key: str) -> None:
        """plan[key]: a list of partial sums; summed over TP for the split parameters (one
        all-reduce for all of them), kept for the whole ones."""
        split = [pl for pl in plans if pl["dim"] is not None]
        flat = self._all_reduce([t for pl in split for t in pl[key]])
        i = 0
        for pl in split:
            pl[key] = flat[i:i + len(pl[key])]
            i += len(pl[key])

    @torch.no_grad()
    def step(self, lr: float, t: int) -> None:
        """One update of every slot's master from its ``.grad`` (fp32, clipped); ``t``: 1-based step."""
        one_minus_beta2 = t ** self.beta2_decay
        rho = min(lr, 1.0 / math.sqrt(t))
        plans = []
        for s in self.slots:  # pass 1: local statistics; partial sums of split parameters
            p, g, st, dim = s.master, s.master.grad, self._init(s), self._split(s)
            sums = [p.square().sum()]  # RMS(P)
            if p.dim() >= 2:
                if dim == 0:  # rows split: row means local; column sums and sum(r) over TP
                    st["row_var"].lerp_(g.norm(dim=-1, keepdim=True).square_().div_(g.size(-1)), one_minus_beta2)
                    sums += [g.square().sum(dim=-2, keepdim=True), st["row_var"].sum()]
                elif dim == 1:  # columns split: column means local; row sums over TP
                    st["col_var"].lerp_(g.norm(dim=-2, keepdim=True).square_().div_(g.size(-2)), one_minus_beta2)
                    sums.append(g.square().sum(dim=-1, keepdim=True))
            plans.append({"dim": dim, "n": p.numel() * (self.tp if dim is not None else 1), "sums": sums})
        self._sums(plans, "sums")
        for s, plan in zip(self.slots, plans):  # pass 2: the update direction and its squared norm
            p, g, st, dim, sums = s.master, s.master.grad, self.st[id(s.master)], plan["dim"], plan["sums"]
            if p.dim() >= 2:
                if dim is None:
                    st["row_var"].lerp_(g.norm(dim=-1, keepdim=True).square_().div_(g.size(-1)), one_minus_beta2)
                    st["col_var"].lerp_(g.norm(dim=-2, keepdim=True).square_().div_(g.size(-2)), one_minus_beta2)
                    row_mean = st["row_var"].mean(dim=-2, keepdim=True)
                elif dim == 0:
                    st["col_var"].lerp_(sums[1] / (g.size(-2) * self.tp), one_minus_beta2)
                    row_mean = (sums[2] / (g.size(-2) * self.tp)).view(1, 1)
                else:
                    st["row_var"].lerp_(sums[1] / (g.size(-1) * self.tp), one_minus_beta2)
                    row_mean = st["row_var"].mean(dim=-2, keepdim=True)
                var = (st["row_var"] @ st["col_var"]).div_(row_mean.clamp(min=self.eps1))
            else:
                st["variance"].lerp_(g * g, one_minus_beta2)
                var = st["variance"].clone()
            plan["u"] = var.clamp_(min=self.eps1 * self.eps1).rsqrt_().mul_(g)
            plan["usq"] = [plan["u"].square().sum()]
        self._sums(plans, "usq")
        for s, plan, wd in zip(self.slots, plans, self.decay):  # pass 3: apply
            p = s.master
            alpha = (plan["sums"][0] / plan["n"]).sqrt().clamp(min=self.eps2) * rho
            denom = ((plan["usq"][0] / plan["n"]).sqrt() / self.d).clamp(min=1.0)
            if wd:
                p.mul_(1 - lr * wd)
            p.sub_(plan["u"].mul_(alpha / denom))

    def load(self, loaded: dict, step: int) -> None:
        """``loaded``: {id(master): {kind: tensor of this rank's part}} (fp32, on the master's device)."""
        for s in self.slots:
            if id(s.master) in loaded:
                self.st[id(s.master)] = {k: v.to(s.master.device, torch.float32).reshape(
                    self.kinds(s)[k].shape if self.kinds(s)[k] is not None else s.master.shape).clone()
                    for k, v in loaded[id(s.master)].items()}

    def storages(self) -> list:
        return [t for st in self.st.values() for t in st.values()]
