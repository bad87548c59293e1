"""Bytes of weights, gradients and optimizer state per rank, and checkpoint size on disk.

Mirrors what training allocates (training/memory.py ``storage_bytes`` measures the same four
numbers): parameters in the training dtype (under Zero-1 inside a buffer of the gradient layout);
one contiguous gradient buffer, fp32 under bf16 or ``--accumulate-allreduce-grads-in-fp32``, else
the parameter dtype, cut into buckets each padded to a multiple of DP (``bucket_layout``, shared
with parallel/data_parallel.py); fp32 masters for 16-bit parameters (an fp32 parameter is its own
master) and two fp32 Adam moments, for every parameter, or under Zero-1 for the elements of each
bucket this DP rank owns.
"""
from __future__ import annotations

from megatron_th.parallel.data_parallel import DEFAULT_BUCKET, bucket_layout

ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
CPU_RNG_STATE_BYTES = 5056  # torch.get_rng_state(): the CPU Mersenne-Twister state
CUDA_RNG_STATE_BYTES = 16   # torch.cuda.get_rng_state(): Philox seed + offset


def precision(o) -> str:
    """"bf16" | "fp16" | "fp32" from the optimizer config (as training decides it)."""
    return "bf16" if o.bf16 else ("fp16" if o.fp16 else "fp32")


def grad_bytes(cfg) -> int:
    prec = precision(cfg.optim)
    return 4 if (prec == "bf16" or cfg.parallel.accumulate_allreduce_grads_in_fp32) else ELEMENT_BYTES[prec]


def bytes_per_param(prec: str, dp: int, zero1: bool, grad_elem_bytes: int, state: float = 8.0) -> dict:
    """Per-parameter bytes by component, ignoring bucket padding (Megatron's table; see
    training/memory.py ``analytic_bytes_per_param``): bf16 2 + 4 + (4 + 8)/d, fp32 4 + 4 + 8/d.
    ``state``: optimizer-state bytes per parameter, AdamW's 8 by default (other optimizers and the
    EMA: training/optimizers/state_bytes.py ``per_param``)."""
    shard = dp if zero1 else 1
    pb = ELEMENT_BYTES[prec]
    out = {"params": float(pb), "grads": float(grad_elem_bytes),
           "master": (4.0 if pb < 4 else 0.0) / shard, "moments": state / shard}
    out["total"] = sum(out.values())
    return out


def static_bytes(numels: list[int], prec: str, grad_elem_bytes: int, dp: int, zero1: bool,
                 bucket_size: int | None = None, dp_rank: int = 0) -> dict:
    """Exact tensor-storage bytes of one rank whose parameters (in model order) have ``numels``
    elements: keys as training/memory.py ``storage_bytes`` (params, grads, master, moments, total)."""
    order = list(reversed(numels))  # the gradient buffer is laid out in backward order
    offsets, buckets = bucket_layout(order, bucket_size or DEFAULT_BUCKET, dp)
    buffer = buckets[-1][1] if buckets else 0
    n = sum(numels)
    owned = n
    if zero1:  # this DP rank's part of each bucket, minus the bucket's padding at its end
        owned = 0
        for start, end, idx in buckets:
            size = (end - start) // dp
            lo = start + dp_rank * size
            real_end = offsets[idx[-1]] + order[idx[-1]]
            owned += max(0, min(lo + size, real_end) - lo)
    pb = ELEMENT_BYTES[prec]
    out = {"params": (buffer if zero1 else n) * pb, "grads": buffer * grad_elem_bytes,
           "master": owned * 4 if pb < 4 else 0, "moments": owned * 8}
    out["total"] = sum(out.values())
    out.update(numel=n, buffer_numel=buffer, owned_numel=owned, buckets=len(buckets))
    return out


def checkpoint_bytes(total_params: int, duplicated: int, prec: str, world: int, tp: int,
                     device: str = "cuda", state: float = 8.0) -> dict:
    """Our checkpoint on disk (training/resume.py ``save_state``): every logical tensor once in its
    training dtype, plus fp32 Adam moments and, for 16-bit parameters, fp32 masters; a tensor that
    two stages hold (the tied embedding's copy on the last stage) is written by both; RNG states of
    every rank. Small files (metadata.json, the tokenizer) and safetensors headers not included.
    ``state``: optimizer-state bytes per parameter (AdamW's 8; ``bytes_per_param``)."""
    pb = ELEMENT_BYTES[prec]
    stored = total_params + duplicated
    rng_per_rank = CPU_RNG_STATE_BYTES + (CUDA_RNG_STATE_BYTES if device == "cuda" else 0)
    if tp > 1:  # the per-TP-rank dropout stream (parallel/rng.py)
        rng_per_rank += CUDA_RNG_STATE_BYTES if device == "cuda" else CPU_RNG_STATE_BYTES
    out = {"weights": stored * pb, "optimizer": round(stored * ((4 if pb < 4 else 0) + state)), "rng": world * rng_per_rank}
    out["total"] = sum(out.values())
    return out


def deepspeed_checkpoint_bytes(total_params: int) -> dict:
    """The seeds' DeepSpeed fp16 checkpoint: fp32 weights (4 B/param) + the optimizer checkpoint
    (fp32 master + two fp32 Adam moments + fp16 parameters, 14 B/param) = 18 B/param."""
    out = {"weights": 4 * total_params, "optimizer": 14 * total_params}
    out["total"] = out["weights"] + out["optimizer"]
    return out
