"""Bytes this rank holds in tensor storage: parameters, gradients, fp32 masters, Adam moments.

Counts each storage once (views into the contiguous buffers are not counted twice). Used by the
memory tests and benchmarks against the analytic per-parameter bytes (reference-facts.md).
"""
from __future__ import annotations


def _bytes(t) -> int:
    return t.numel() * t.element_size()


def storage_bytes(named_params, optimizer, buffers=None) -> dict:
    params = [p for _, p in named_params]
    out = {"params": 0, "grads": 0, "master": 0, "moments": 0}
    if buffers is not None and buffers.param_data is not None:
        out["params"] = _bytes(buffers.param_data)
    else:
        out["params"] = sum(_bytes(p) for p in params)
    if buffers is not None:
        out["grads"] = _bytes(buffers.data)
    else:
        out["grads"] = sum(_bytes(p.grad) for p in params if p.grad is not None)
    for s in optimizer.slots:
        if s.param.dtype.is_floating_point and s.param.element_size() < 4:
            out["master"] += _bytes(s.master)
        st = optimizer.opt.state.get(s.master, {}) if optimizer.opt else {}
        out["moments"] += sum(_bytes(st[k]) for k in ("exp_avg", "exp_avg_sq") if k in st)
    out["total"] = sum(out.values())
    return out


def analytic_bytes_per_param(precision: str, dp: int, distributed_optimizer: bool) -> float:
    """Megatron's table: bf16 params + fp32 grads 18 -> 6 + 12/d; fp32 16 -> 8 + 8/d."""
    if precision == "bf16":
        return 6 + 12 / dp if distributed_optimizer else 18.0
    if precision == "fp32":
        return 8 + 8 / dp if distributed_optimizer else 16.0
    raise ValueError(f"no table entry for {precision}")
