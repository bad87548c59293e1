"""Training metrics: one console line and one JSON object per --log-interval; MFU; TensorBoard.

Exactly one process writes (the caller passes ``enabled`` for the rank that holds the loss).
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from megatron_th.estimate.hardware import match_device


def measure_matmul_tflops(dtype=torch.float32, n: int = 1024, reps: int = 5, device="cpu") -> float:
    """Peak matmul throughput measured here (used as the MFU denominator on CPU)."""
    g = torch.Generator(device=device).manual_seed(0)  # never touches the training RNG streams
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


def peak_tflops(dtype_name: str, device: str, override: float | None = None) -> float:
    if override:
        return override
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = match_device(torch.cuda.get_device_name())  # dense peak (estimate/hardware.py)
        if gpu is not None and gpu.peak(dtype_name):
            return gpu.peak(dtype_name)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    return measure_matmul_tflops(dt, device=device)


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _k(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


class MetricsLogger:
    def __init__(self, log_dir: str | None, enabled: bool, train_iters: int, tensorboard_dir: str | None = None):
        self.enabled, self.train_iters = enabled, train_iters
        self.path = os.path.join(log_dir, "metrics.jsonl") if (log_dir and enabled) else None
        if self.path:
            os.makedirs(log_dir, exist_ok=True)
        self.tb = None
        if enabled and tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(tensorboard_dir)
            except ImportError:
                print("note: tensorboard is not installed; --tensorboard-dir ignored")

    def _write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb:
            tag = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iteration", "split"):
                    self.tb.add_scalar(f"{tag}/{k}", v, record["iteration"])

    def train(self, rec: dict, seconds_left: float) -> None:
        if not self.enabled:
            return
        self._write(rec)
        print(f"iter {rec['iteration']}/{self.train_iters} | loss {rec['lm_loss']:.3f} | lr {rec['lr']:.2e} | "
              f"gnorm {rec['grad_norm']:.2f} | {_k(rec['tokens_per_sec'])} tok/s | "
              f"{rec['tflops']:.2f} TFLOP/s | MFU {100 * rec['mfu']:.0f}% | "
              + (f"scale {rec['loss_scale']:.0f} | " if rec.get("loss_scale", 1.0) != 1.0 else "")
              + (f"skipped {rec['skipped_iters']} | " if rec.get("skipped_iters") else "")
              + f"eta {fmt_eta(seconds_left)}", flush=True)

    def eval(self, rec: dict) -> None:
        if not self.enabled:
            return
        self._write(dict(rec, split=rec.get("split", "valid")))
        per = "".join(f" | {k} {v:.3f}" for k, v in rec.get("per_source", {}).items())
        print(f"eval iter {rec['iteration']} | {rec.get('split', 'valid')} loss {rec['lm_loss']:.3f} | "
              f"ppl {rec['ppl']:.2f}{per}", flush=True)
