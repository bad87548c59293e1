"""Muon (``--optimizer muon``): orthogonalised momentum for the transformer layers' matrices, AdamW
for the rest (embeddings, output layer, norms, biases), as Muon's authors prescribe.

For a matrix W with gradient G (K. Jordan, "Muon: An optimizer for hidden layers in neural
networks", 2024; torch/optim/_muon.py; Megatron's TensorParallelMuon, the emerging_optimizers
package):

    B <- lerp(B, G, 1 - momentum);  M = lerp(G, B, momentum) with --muon-use-nesterov, else B
    O = NS_k(M) per logical matrix;  W <- W (1 - lr wd) - lr * scale(out, in) * extra * O

NS_k: k quintic Newton-Schulz iterations with Keller Jordan's coefficients (3.4445, -4.7750,
2.0315) after scaling M to unit Frobenius norm (torch.optim.Muon's ``_zeropower_via_newtonschulz``,
in bf16 for --muon-fp32-matmul-prec low/medium as torch does, fp32 for high). scale:
``--muon-scale-mode`` (Megatron's ``get_muon_scale_factor``): spectral sqrt(max(out, in)),
unit_rms_norm sqrt(out/in), shape_scaling sqrt(max(1, out/in)) (= torch's "original").

Logical matrices: ``linear_qkv`` holds q, k and v grouped per key/value group (model/blocks.py);
with ``--muon-split-qkv`` they are orthogonalised separately, as Megatron splits them, and so are
gate and up of a gated MLP's ``linear_fc1``. Under TP ("duplicated", Megatron's
``--muon-tp-mode duplicated``) every TP rank all-gathers the full matrix, orthogonalises it and
keeps its own shard, so a TP run makes the serial run's update.
"""
from __future__ import annotations

import torch

from megatron_th.parallel import comm
from megatron_th.parallel.layers import shard
from megatron_th.training.optimizers import TorchRule, _adamw, decay_groups

QUINTIC = (3.4445, -4.7750, 2.0315)  # torch.optim._muon DEFAULT_A/B/C; Megatron's "quintic"
NS_EPS = 1e-7  # torch.optim._muon EPS


def newton_schulz(g: torch.Tensor, steps: int, dtype=torch.bfloat16, eps: float = NS_EPS,
                  coefficients=QUINTIC) -> torch.Tensor:
    """The orthogonalisation of 2-D ``g`` (torch.optim._muon ``_zeropower_via_newtonschulz``): ``steps``
    quintic iterations in ``dtype`` on g / ||g||_F (transposed when taller than wide). Returns a
    ``dtype`` tensor of g's shape. ValueError for a non-2-D g."""
    if g.dim() != 2:
        raise ValueError(f"newton_schulz: a matrix is needed, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def scale_factor(rows: int, cols: int, mode: str) -> float:
    """Megatron's ``get_muon_scale_factor`` for an out x in = rows x cols matrix."""
    if mode == "spectral":
        return max(rows, cols) ** 0.5
    if mode == "unit_rms_norm":
        return (rows / cols) ** 0.5
    if mode == "shape_scaling":
        return max(1.0, rows / cols) ** 0.5
    raise ValueError(f"--muon-scale-mode {mode!r}: expected spectral, unit_rms_norm or shape_scaling")


def is_matrix(name: str, p) -> bool:
    """Whether Muon updates this parameter: a 2-D weight of a transformer layer (not an embedding
    or the output layer)."""
    return p.dim() == 2 and not name.startswith(("embedding.", "output_layer."))


def gather_logical(t: torch.Tensor, tp_dim: int, chunks: int, group, tp: int) -> torch.Tensor:
    """The logical tensor from every TP rank's shard (the inverse of parallel/layers.py ``shard``):
    all-gather along ``tp_dim``, then put each of the ``chunks`` stacked blocks back together."""
    full = comm.all_gather(t.contiguous(), group, dim=tp_dim)
    if chunks == 1:
        return full
    blocks = [r.chunk(chunks, dim=tp_dim) for r in full.chunk(tp, dim=tp_dim)]
    return torch.cat([blocks[r][k] for k in range(chunks) for r in range(tp)], dim=tp_dim)


class Muon:
    """The rule over ``slots`` (whole parameters; Zero-1 shards this rule by parameter): Muon for
    the transformer layers' matrices (``is_matrix``), AdamW (``TorchRule``) for the rest.
    ``names[slot.index]``: logical names; ``groups``: ParallelGroups (TP gathers; None: one
    process); ``model_cfg``: heads and groups for the q/k/v split (None: no split). State: an fp32
    ``momentum_buffer`` of each matrix's local shard."""

    elementwise = False

    def __init__(self, slots, names, o, groups=None, model_cfg=None):
        self.names = names
        self.matrix = [s for s in slots if is_matrix(names[s.index], s.param)]
        self.matrix_ids = {id(s.master) for s in self.matrix}
        rest = [s for s in slots if id(s.master) not in self.matrix_ids]
        groups_ = decay_groups(rest, o.weight_decay)
        self.adam = TorchRule(rest, _adamw(groups_, o) if groups_ else None, ("exp_avg", "exp_avg_sq"), True)
        self.opt = self.adam.opt
        self.group = groups.tp_group if groups is not None and groups.tp > 1 else None
        self.tp, self.tp_rank = (groups.tp, groups.tp_rank) if self.group is not None else (1, 0)
        self.o, self.cfg = o, model_cfg
        self.dtype = torch.float32 if o.muon_fp32_matmul_prec == "high" else torch.bfloat16
        self.buf: dict = {}  # id(master) -> momentum buffer

    def kinds(self, s) -> dict:
        return {"momentum_buffer": None} if id(s.master) in self.matrix_ids else self.adam.kinds(s)

    def state(self, s) -> dict:
        if id(s.master) in self.matrix_ids:
            return {"momentum_buffer": self.buf[id(s.master)]} if id(s.master) in self.buf else {}
        return self.adam.state(s)

    def _blocks(self, name: str, full: torch.Tensor) -> list:
        """The logical matrices of ``full`` (views or copies) and how to put them back."""
        o, m = self.o, self.cfg
        if o.muon_split_qkv and m is not None and name.endswith("self_attention.linear_qkv.weight"):
            qpg = m.num_attention_heads // m.num_query_groups
            v = full.view(m.num_query_groups, (qpg + 2) * m.kv_channels, full.size(1))
            return [b.reshape(-1, full.size(1)) for b in v.split([qpg * m.kv_channels, m.kv_channels,
                                                                  m.kv_channels], dim=1)]
        if o.muon_split_qkv and m is not None and m.gated_linear_unit and name.endswith("mlp.linear_fc1.weight"):
            return list(full.chunk(2, dim=0))
        return [full]

    def _orthogonalise(self, name: str, full: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(O, factor): the scaled update is factor * O (factor 1 when the blocks are scaled)."""
        o = self.o
        blocks = self._blocks(name, full)
        outs = [newton_schulz(b, o.muon_num_ns_steps, self.dtype) for b in blocks]
        scales = [scale_factor(b.size(0), b.size(1), o.muon_scale_mode) * o.muon_extra_scale_factor for b in blocks]
        if len(blocks) == 1:
            return outs[0], scales[0]
        scaled = [x.float() * s for x, s in zip(outs, scales)]
        if name.endswith("linear_qkv.weight"):
            g = self.cfg.num_query_groups
            return torch.cat([x.view(g, -1, full.size(1)) for x in scaled], dim=1).view_as(full), 1.0
        return torch.cat(scaled, dim=0), 1.0

    @torch.no_grad()
    def step(self, lr: float, t: int) -> None:
        """One update of every slot's master from its ``.grad`` (fp32, clipped); ``t``: 1-based step."""
        self.adam.step(lr, t)
        o = self.o
        for s in self.matrix:
            p, g = s.master, s.master.grad
            buf = self.buf.get(id(p))
            if buf is None:
                buf = self.buf[id(p)] = torch.zeros_like(g)
            buf.lerp_(g, 1 - o.muon_momentum)
            m = g.lerp(buf, o.muon_momentum) if o.muon_use_nesterov else buf
            dim = getattr(s.param, "tp_dim", None) if self.group is not None else None
            chunks = getattr(s.param, "tp_chunks", 1)
            full = gather_logical(m, dim, chunks, self.group, self.tp) if dim is not None else m
            upd, factor = self._orthogonalise(self.names[s.index], full)
            if dim is not None:
                upd = shard(upd, dim, self.tp_rank, self.tp, chunks)
            p.mul_(1 - lr * o.weight_decay)
            p.add_(upd, alpha=-lr * factor)

    def load(self, loaded: dict, step: int) -> None:
        """``loaded``: {id(master): {kind: tensor}}: momentum buffers here, the rest to AdamW."""
        ids = self.matrix_ids
        for s in self.matrix:
            if id(s.master) in loaded:
                self.buf[id(s.master)] = loaded[id(s.master)]["momentum_buffer"].to(
                    s.master.device, torch.float32).reshape(s.master.shape).clone()
        self.adam.load({k: v for k, v in loaded.items() if k not in ids}, step)

    def storages(self) -> list:
        return list(self.buf.values()) + self.adam.storages()
