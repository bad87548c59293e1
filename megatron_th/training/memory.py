"""Bytes this rank holds in tensor storage: parameters, gradients, fp32 masters, Adam moments;
and the activation bytes autograd saves for backward.

Counts each storage once (views into the contiguous buffers are not counted twice). Used by the
memory tests and benchmarks against the analytic per-parameter bytes (reference-facts.md) and
against the estimator (megatron_th/estimate).
"""
from __future__ import annotations


def _bytes(t) -> int:
    return t.numel() * t.element_size()


def storage_bytes(named_params, optimizer, buffers=None) -> dict:
    """{params, grads, master, moments, total} bytes of this rank; ``moments`` is all the optimizer
    state of the update rule (--optimizer: Adam's two moments, SGD's or Muon's momentum,
    Adafactor's factors) plus the EMA (--ema-decay), and with an EMA ``ema``: the EMA alone."""
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
    out["moments"] = sum(_bytes(t) for t in optimizer.rule.storages())
    ema = getattr(optimizer, "ema", None)
    if ema is not None:
        out["ema"] = sum(_bytes(t) for t in ema.storages())
        out["moments"] += out["ema"]
    out["total"] = out["params"] + out["grads"] + out["master"] + out["moments"]
    return out


def analytic_bytes_per_param(precision: str, dp: int, distributed_optimizer: bool) -> float:
    """Megatron's table (distributed-optimizer docs), d = DP size: fp16 params + fp16 grads
    20 -> 4 + 16/d (Megatron keeps an fp32 copy of the gradients too); bf16 params + fp32 grads
    18 -> 6 + 12/d; fp32 16 -> 8 + 8/d. Ours equals the bf16 and fp32 rows; under fp16 we keep no
    persistent fp32 gradient copy: 16 -> 4 + 12/d (estimate/memory.py ``bytes_per_param``)."""
    if precision == "fp16":
        return 4 + 16 / dp if distributed_optimizer else 20.0
    if precision == "bf16":
        return 6 + 12 / dp if distributed_optimizer else 18.0
    if precision == "fp32":
        return 8 + 8 / dp if distributed_optimizer else 16.0
    raise ValueError(f"no table entry for {precision}")


def saved_activation_bytes(model, inputs: dict, loss_mask=None, param_ptrs: set | None = None) -> dict:
    """One forward + backward of ``model(**inputs)`` (inputs hold ``labels``: the model returns the
    per-token loss); the bytes of the storages autograd saves for backward, captured with
    ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, the model's parameter
    storages excluded (a weight saved by a matmul is not an activation). That sum is the activation
    memory alive when backward starts, i.e. its peak for one micro-batch. The loss is reduced as
    training does (``(per_token * loss_mask).sum()``). Collective inside the model (TP) means every
    rank of the group must call this together."""
    import torch

    if param_ptrs is None:
        param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    acts: dict = {}   # storage data_ptr -> (nbytes, tensor kept alive so the address stays unique)
    weights: dict = {}
    count = [0]

    def pack(t):
        count[0] += 1
        try:
            st = t.untyped_storage()
            ptr, nbytes = st.data_ptr(), st.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # no plain storage (e.g. a subclass)
            ptr, nbytes = id(t), t.numel() * t.element_size()
        if nbytes:
            (weights if ptr in param_ptrs else acts)[ptr] = (nbytes, t)
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        per_token = model(**inputs)
        mask = loss_mask if loss_mask is not None else torch.ones_like(per_token)
        loss = (per_token * mask).sum()
    out = {"activation_bytes": sum(n for n, _ in acts.values()), "activation_storages": len(acts),
           "saved_parameter_bytes": sum(n for n, _ in weights.values()), "saved_tensors": count[0]}
    loss.backward()
    acts.clear()
    weights.clear()
    return out
