"""What every gpu_check step shares: the run context, results, and running pretrain() in-process.

Steps call the public training entry points only (``parse_config`` + ``pretrain``, the same
flags as ``pretrain_gpt.py``); device, backend, dtype and sizes come from the profile
(sizes.py), so the GPU and the ``--cpu`` path are one implementation.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

from gpu_check_steps import sizes


@dataclass
class Result:
    """One ``STEP`` line: ``value`` in ``unit`` (None prints as nan), ``detail`` one line of text,
    ``seconds`` filled in by the worker, ``extra`` optional JSON-able data for gpu_check.json."""
    step: str
    status: str  # PASS | FAIL | SKIP
    value: float | None = None
    unit: str = "-"
    detail: str = ""
    seconds: float = 0.0
    extra: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["extra"] is None:
            del d["extra"]
        return d


def check(step: str, ok: bool, value, unit: str, detail: str = "", extra=None) -> Result:
    return Result(step, "PASS" if ok else "FAIL", value, unit, detail, extra=extra)


def skip(step: str, reason: str, unit: str = "-") -> Result:
    return Result(step, "SKIP", None, unit, reason)


@dataclass
class Context:
    """Where and how this process runs the steps (built by the worker from the plan)."""
    mode: str                      # "gpu" | "cpu"
    workdir: str
    world: int = 1                 # ranks of this launch (1 in the single-device worker)
    rank: int = 0
    inject: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    nproc: int | None = None       # --nproc: ranks of the multi-device launch (default: every GPU / 4 on CPU)

    def __post_init__(self):
        self.profile = self.profile or sizes.PROFILES[self.mode]

    @property
    def device(self):
        import torch
        if self.mode == "cpu":
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def dtype(self):
        import torch
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[self.profile["dtype"]]

    def dist_world(self) -> int:
        """Ranks the multi-device launch uses (sizes.dist_world with the GPUs torch sees)."""
        import torch
        return sizes.dist_world(self.mode, self.nproc, torch.cuda.device_count() if self.mode == "gpu" else 0)

    def gpu_missing(self) -> str | None:
        """A reason to skip a CUDA step, or None."""
        import torch
        if self.mode == "gpu" and not torch.cuda.is_available():
            return "no CUDA GPU visible to torch (see the env step); --cpu checks the CPU path"
        return None

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)


def rel_diff(a: list, b: list) -> float:
    """max_i |a_i - b_i| / |b_i| over paired values; inf for different lengths or non-finite values."""
    if len(a) != len(b) or not a:
        return math.inf
    out = 0.0
    for x, y in zip(a, b):
        if not (math.isfinite(x) and math.isfinite(y)):
            return math.inf
        out = max(out, abs(x - y) / max(abs(y), 1e-12))
    return out


def pretrain_argv(ctx: Context, spec: dict, *extra, iters: int | None = None, train_dtype: bool = True,
                  log_interval: int | None = None, measure_peak: bool = False) -> list[str]:
    """pretrain_gpt.py flags for ``spec`` (a profile entry: model, seq, mbs, gbs, iters, lr, ...).

    The learning-rate schedule is fixed by ``spec["schedule"]`` (default ``spec["iters"]``;
    --lr-decay-iters), so a run stopped early and resumed follows the uninterrupted one's schedule.
    ``train_dtype``: bf16 when the profile says so (else fp32). ``measure_peak``: let pretrain find
    the MFU peak (else --peak-tflops 1: MFU is not looked at, and finding it may cost a matmul
    benchmark per run)."""
    total = spec.get("schedule", spec["iters"])
    argv = [*sizes.flags(spec["model"]), "--seq-length", str(spec["seq"]),
            "--micro-batch-size", str(spec["mbs"]), "--global-batch-size", str(spec["gbs"]),
            "--train-iters", str(iters or spec["iters"]), "--lr", str(spec.get("lr", 1e-3)),
            "--min-lr", str(spec.get("lr", 1e-3) / 10), "--lr-warmup-iters", str(spec.get("warmup", 1)),
            "--lr-decay-iters", str(total), "--log-interval", str(log_interval or spec.get("log_interval", 1)),
            "--seed", "1234", "--data-cache-path", ctx.path("cache"),
            "--distributed-backend", ctx.profile["backend"]]
    if ctx.mode == "cpu":  # tiny ops: one thread each (more only spin; the ranks share the cores)
        argv += ["--num-threads", "1"]
    if train_dtype and ctx.profile["dtype"] == "bf16":
        argv.append("--bf16")
    if not measure_peak:
        argv += ["--peak-tflops", "1"]
    return argv + [str(x) for x in extra]


def run_pretrain(argv: list[str]) -> dict:
    """pretrain() in this process (every rank of a launch calls it with the same argv); its log
    lines go to this process's log file. Returns pretrain's summary dict."""
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    print("$ pretrain_gpt.py " + " ".join(argv), flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg, _ = parse_config(argv)
    out = pretrain(cfg, log=lambda *a, **k: print(*a, **k, flush=True))
    print(f"gpu_check: pretrain took {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU)",
          flush=True)
    return out


def release(res: dict | None = None) -> None:
    """Drop what the last run left before the next one: its process groups (``res["groups"]``, the
    ParallelGroups pretrain returns; every pretrain call makes new ones, and NCCL communicators hold
    device buffers), then models and optimizer state."""
    import torch
    import torch.distributed as dist

    groups = res.get("groups") if res else None
    if groups is not None and dist.is_initialized():
        own = {}
        for name, value in sorted(vars(groups).items()):  # the same order on every rank
            if isinstance(value, dist.ProcessGroup) and value is not dist.group.WORLD and id(value) not in own:
                own[id(value)] = value
        for grp in own.values():
            dist.destroy_process_group(grp)
    if res:
        res.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
