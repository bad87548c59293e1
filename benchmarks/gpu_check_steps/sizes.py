"""Sizes and tolerances of every gpu_check step, per mode; pure data and pure functions (no torch).

"gpu": CUDA + NCCL, bf16 where the step trains, real sizes (a ~100M and a ~1B model, 16 MiB pipeline
messages). "cpu" (``--cpu``): the same steps on CPU + gloo, fp32, sizes small enough for the whole
check to run inside the test suite. The steps read only these numbers; nothing else differs.
"""
from __future__ import annotations

# Llama-style blocks everywhere (RoPE, RMSNorm, SwiGLU, no biases); vocab 8000 = the embedded tokenizer.
LLAMA = {"position-embedding-type": "rope", "normalization": "RMSNorm", "swiglu": True,
         "disable-bias-linear": True, "hidden-dropout": 0.0, "attention-dropout": 0.0}


def model(layers, hidden, heads, groups, ffn, **more):
    """pretrain_gpt.py model flags as a {flag: value} dict (True = a switch)."""
    return {**LLAMA, "num-layers": layers, "hidden-size": hidden, "num-attention-heads": heads,
            "num-query-groups": groups, "ffn-hidden-size": ffn, **more}


M100 = model(12, 768, 12, 4, 2560)        # ~96M parameters with the 8000-token vocabulary
M1B = model(20, 2048, 16, 8, 5632, **{"untie-embeddings-and-output-weights": True})  # ~0.98B

PROFILES = {
    "gpu": {
        "dtype": "bf16", "backend": "nccl", "device": "cuda",
        # attention: inputs [b, heads, s, head_dim]; max |err| / max |ref| of out, dq, dk, dv
        "attention": {"b": 2, "heads": 16, "kv_heads": 4, "seq": 2048, "head_dim": 128, "tol": 2e-2},
        "train": {"model": M100, "seq": 1024, "mbs": 4, "gbs": 16, "iters": 60, "lr": 6e-4, "warmup": 10,
                  "min_drop": 1.0},
        "resume": {"model": M100, "seq": 1024, "mbs": 4, "gbs": 16, "iters": 10, "tol": 2e-2},
        # Zero-1 save: peak extra device memory (max_memory_allocated) <= factor x the largest fp32 bucket
        "zero1": {"model": M100, "seq": 1024, "mbs": 4, "gbs": 16, "iters": 2, "bucket": 2_000_000, "factor": 2},
        "syncs": {"model": model(2, 512, 8, 4, 1408), "more_layers": 4, "seq": 1024, "mbs": 2, "gbs": 4,
                  "iters": 2},
        "throughput": {"model": M1B, "seq": 2048, "mbs": 2, "gbs": 16, "iters": 10, "log_interval": 5,
                       "min_memory_gib": 30},
        # parity and resharding: fp32, --no-tf32, against one GPU; loss / grad-norm relative tolerances
        "parity": {"model": model(8, 512, 8, 4, 1408), "seq": 512, "mbs": 2, "iters": 6, "resume_iters": 3,
                   "loss_tol": 1e-4, "gnorm_tol": 1e-3},
        # the deadlock probe: every p2p message >= 16 MiB (1 x 2048 x 4096 bf16)
        "probe": {"hidden": 4096, "heads": 32, "groups": 8, "ffn": 4096, "seq": 2048, "mbs": 1, "iters": 2,
                  "min_mib": 16},
    },
    "cpu": {
        "dtype": "fp32", "backend": "gloo", "device": "cpu",
        "attention": {"b": 2, "heads": 4, "kv_heads": 2, "seq": 64, "head_dim": 16, "tol": 1e-4},
        "train": {"model": model(2, 64, 4, 2, 128), "seq": 64, "mbs": 4, "gbs": 4, "iters": 12, "lr": 1e-2,
                  "warmup": 2, "min_drop": 0.3},
        "resume": {"model": model(2, 32, 4, 2, 64), "seq": 32, "mbs": 2, "gbs": 2, "iters": 4, "tol": 1e-6},
        # one allocation (record_allocations().max_bytes) <= the largest fp32 bucket
        "zero1": {"model": model(4, 128, 4, 2, 352), "seq": 32, "mbs": 2, "gbs": 2, "iters": 1,
                  "bucket": 50_000, "factor": 1},
        "syncs": {"model": model(1, 32, 4, 2, 64), "more_layers": 2, "seq": 64, "mbs": 2, "gbs": 4, "iters": 2},
        "throughput": {"model": model(2, 64, 4, 2, 128), "seq": 64, "mbs": 4, "gbs": 4, "iters": 4,
                       "log_interval": 2, "min_memory_gib": 0},
        "parity": {"model": model(4, 32, 8, 4, 64), "seq": 32, "mbs": 1, "iters": 3, "resume_iters": 2,
                   "loss_tol": 1e-4, "gnorm_tol": 1e-3},
        "probe": {"hidden": 64, "heads": 4, "groups": 2, "ffn": 128, "seq": 64, "mbs": 1, "iters": 1,
                  "min_mib": 0},
    },
}

MAX_CPU_RANKS = 4


def layouts(world: int, layers: int) -> dict:
    """Parallel layouts checked against the 1-device reference on ``world`` ranks: name -> flags.
    TP is at most 4 (the parity model has 4 KV groups); every layout uses all ranks (the rest is DP)."""
    out = {}
    tp = next((t for t in (4, 2) if world % t == 0), None)
    if tp:
        out[f"tp{tp}_sp"] = ["--tensor-model-parallel-size", str(tp), "--sequence-parallel"]
    pp = next((p for p in (4, 2) if world % p == 0 and layers % p == 0), None)
    if pp:
        out[f"pp{pp}_1f1b"] = ["--pipeline-model-parallel-size", str(pp)]
    if world % 2 == 0 and layers % 4 == 0:
        out["pp2_interleaved"] = ["--pipeline-model-parallel-size", "2",
                                  "--num-layers-per-virtual-pipeline-stage", str(layers // 4)]
    if "pp2_interleaved" not in out or world < 4:  # else plain DP is in it (DP = world / 2 >= 2)
        out[f"dp{world}"] = []
    out[f"dp{world}_zero1"] = ["--use-distributed-optimizer"]
    if world % 4 == 0:
        out["tp2_pp2_sp_zero1"] = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                   "--sequence-parallel", "--use-distributed-optimizer"]
    return out


def reshard_pair(world: int, layers: int) -> tuple[str, str]:
    """(layout that saves, layout that resumes): different TP, PP, DP and optimizer sharding where
    the world allows."""
    lay = layouts(world, layers)
    save = next(n for n in ("tp2_pp2_sp_zero1", "tp2_sp", "tp4_sp", f"dp{world}_zero1") if n in lay)
    load = next(n for n in ("pp2_interleaved", "pp4_1f1b", "pp2_1f1b", f"dp{world}") if n in lay and n != save)
    return save, load


def flags(d: dict) -> list[str]:
    """{flag: value} -> argv; True -> --flag, False -> --no-flag, None -> omitted."""
    out = []
    for k, v in d.items():
        if v is True:
            out.append(f"--{k}")
        elif v is False:
            out.append(f"--no-{k}")
        elif v is not None:
            out += [f"--{k}", str(v)]
    return out


def dist_world(mode: str, nproc: int | None, device_count: int) -> int:
    """Ranks of the multi-device launch: --cpu: ``nproc`` (default and at most MAX_CPU_RANKS);
    GPU: one per visible GPU, or ``nproc`` of them."""
    if mode == "cpu":
        return max(1, min(nproc or MAX_CPU_RANKS, MAX_CPU_RANKS))
    return min(nproc or device_count, device_count)


def parity_spec(profile: dict, world: int) -> dict:
    """The parity runs' settings for ``world`` ranks: a global batch of two micro-batches per rank, so
    every layout (DP up to ``world``, interleaving needs a multiple of PP) divides it. The
    learning-rate schedule (``schedule``) spans the parity steps and the resumed ones."""
    spec = dict(profile["parity"])
    spec["gbs"] = spec["mbs"] * 2 * world
    spec["schedule"] = spec["iters"] + spec["resume_iters"]
    return spec
