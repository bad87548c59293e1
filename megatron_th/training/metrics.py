"""Training metrics: one console line and one JSON object per --log-interval; MFU; TensorBoard.

Exactly one process writes (the caller passes ``enabled`` for the rank that holds the loss).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch

from megatron_th.estimate.hardware import match_device


def tf32_enabled(device_type: str, precision: str, flag: bool | None) -> bool:
    """Whether fp32 matmuls/convolutions may use TF32 tensor cores; a pure function.

    ``flag`` is --tf32 (True) / --no-tf32 (False) / absent (None: on for fp32 training on CUDA,
    off for bf16/fp16, whose fp32 matmuls are few and kept exact). Never on off CUDA: TF32 is a
    CUDA tensor-core format (torch.backends.cuda.matmul / torch.backends.cudnn)."""
    if device_type != "cuda":
        return False
    return precision == "fp32" if flag is None else bool(flag)


def apply_tf32(enabled: bool, device_type: str) -> None:
    """Set PyTorch's process-wide TF32 switches for matmul (cuBLAS) and cuDNN convolutions, both
    ways (cuDNN allows TF32 by default, cuBLAS does not). Uses the ``fp32_precision`` settings
    ("tf32" | "ieee", PyTorch >= 2.9, docs/notes/cuda.rst) where present, else ``allow_tf32``.
    Does nothing off CUDA, so a CPU run leaves the process untouched."""
    if device_type != "cuda":
        return
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled


@dataclass(frozen=True)
class Peak:
    """The MFU denominator: dense peak TFLOP/s per device, and where it came from
    ("given by --peak-tflops", "tf32 (A100 SXM4 80GB table)", "fp32 measured (1024^3 matmul x3 on cpu)")."""
    tflops: float
    source: str


def time_matmuls(timer, target_seconds: float = 0.2, reps: int = 5, warmups: int = 3, n0: int = 256,
                 max_n: int = 4096) -> tuple[float, int, int]:
    """Best sustained matmul rate found by ``timer(n, k)`` (seconds for k back-to-back n x n
    matmuls, synchronised): (TFLOP/s, n, k).

    At each size n (doubling from ``n0``) one matmul's time is the shortest of ``warmups`` calls,
    so the first calls (cold caches, thread-pool or cuBLAS start-up) never decide anything; n grows
    while a matmul of twice the size (8x the work) would still fit in one repetition of
    target_seconds / reps, up to ``max_n`` (memory: three n x n tensors). Then k is chosen so one
    repetition lasts about target_seconds / reps, and the best (shortest) of ``reps`` repetitions
    counts: a busy neighbour only ever slows some of them. Total time about 1.2 x target_seconds."""
    n = n0
    while True:
        one = max(min(timer(n, 1) for _ in range(warmups)), 1e-9)
        if 8 * one > target_seconds / reps or n >= max_n:
            break
        n = min(2 * n, max_n)
    k = max(1, round(target_seconds / reps / one))
    best = min(timer(n, k) for _ in range(reps))
    return 2 * n ** 3 * k / max(best, 1e-9) / 1e12, n, k


class _MatmulTimer:
    """timer(n, k) for time_matmuls: k ``torch.mm(a, b, out=c)`` of n x n random tensors."""

    def __init__(self, dtype, device):
        self.dtype, self.device, self.n = dtype, torch.device(device), None

    def __call__(self, n: int, k: int) -> float:
        if n != self.n:
            g = torch.Generator(device=self.device).manual_seed(0)  # never touches the training RNG streams
            self.a, self.b = (torch.randn(n, n, device=self.device, dtype=self.dtype, generator=g) for _ in range(2))
            self.c, self.n = torch.empty_like(self.a), n
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        for _ in range(k):
            torch.mm(self.a, self.b, out=self.c)
        sync()
        return time.perf_counter() - t


_MEASURED: dict = {}


def measure_matmul(dtype=torch.float32, device="cpu", target_seconds: float = 0.2, n: int | None = None,
                   reps: int = 5) -> tuple[float, int, int]:
    """(TFLOP/s, n, k) of matmuls measured here (see time_matmuls); ``n`` fixes the size (no
    search). Measured once per process for a given (dtype, device, thread count, n, target) and
    then reused. On CUDA it reflects the TF32 setting in force."""
    device = torch.device(device)
    key = (dtype, str(device), torch.get_num_threads(), n, target_seconds, reps)
    if key not in _MEASURED:
        max_n = n or (8192 if device.type == "cuda" else 4096)
        _MEASURED[key] = time_matmuls(_MatmulTimer(dtype, device), target_seconds, reps, n0=n or 256, max_n=max_n)
    return _MEASURED[key]


def measure_matmul_tflops(dtype=torch.float32, n: int | None = None, reps: int = 5, device="cpu",
                          target_seconds: float = 0.2) -> float:
    """Matmul TFLOP/s measured here (measure_matmul's first element)."""
    return measure_matmul(dtype, device, target_seconds, n, reps)[0]


def peak_tflops(dtype_name: str, device: str, override: float | None = None, tf32: bool = False) -> Peak:
    """MFU denominator for training in ``dtype_name`` ("bf16" | "fp16" | "fp32") on a device type.

    ``override`` (--peak-tflops) wins; on CUDA a catalogued GPU (estimate/hardware.py, matched by
    torch.cuda.get_device_name) gives its dense datasheet peak: the TF32 tensor-core figure for fp32
    with ``tf32``, the plain FP32 one without; anything else (CPU, unknown GPU) is measured with
    measure_matmul in that dtype (under the TF32 setting in force)."""
    if override:
        return Peak(float(override), "given by --peak-tflops")
    kind = "tf32" if (dtype_name == "fp32" and tf32) else dtype_name
    if device.startswith("cuda"):
        gpu = match_device(torch.cuda.get_device_name())
        if gpu is not None and gpu.peak(dtype_name, tf32):
            if gpu.peak(dtype_name, tf32) == gpu.peak(dtype_name, False):
                kind = dtype_name  # no TF32 units (V100): plain FP32
            return Peak(gpu.peak(dtype_name, tf32), f"{kind} ({gpu.note} table)")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    tflops, n, k = measure_matmul(dt, device)
    return Peak(tflops, f"{kind} measured ({n}^3 matmul x{k} on {device})")


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _mfu(rec: dict) -> str:
    """'MFU 41% of 156 TFLOP/s tf32 (A100 SXM4 80GB table) | ' (the peak it divides by, and its source)."""
    if rec.get("mfu") is None:
        return ""
    peak = f" of {rec['peak_tflops']:.3g} TFLOP/s {rec['peak_source']}" if rec.get("peak_source") else ""
    return f"MFU {100 * rec['mfu']:.0f}%{peak} | "


def _k(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def supersede_after(path: str, iteration: int) -> int:
    """Moves the records of ``path`` (a metrics.jsonl) whose ``iteration`` is past ``iteration``, and
    any line that is not a JSON object (a write torn by a kill), to ``path + ".superseded"``
    (appended), so that a run resumed from the checkpoint at ``iteration`` does not log the
    iterations it repeats twice; TensorBoard's ``purge_step`` does the same to its events. Nothing is
    lost: the moved lines are written and flushed before ``path`` is atomically replaced. Returns
    how many lines moved (0 when ``path`` does not exist)."""
    if not os.path.exists(path):
        return 0
    keep, moved = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                past = not isinstance(rec, dict) or rec.get("iteration", 0) > iteration
            except ValueError:
                past = True
            (moved if past else keep).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    with open(path + ".superseded", "a", encoding="utf-8") as f:
        f.writelines(moved)
        f.flush()
        os.fsync(f.fileno())
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(moved)


class MetricsLogger:
    """Writes each record to the console, metrics.jsonl, TensorBoard (``tensorboard_dir``) and W&B
    (``wandb``: a wandb_log.WandbWriter, or None); does nothing unless ``enabled``. ``extra``:
    fields added to every record (the task's, e.g. SFT's ``loss_normalization``). ``close()``
    at the end of training finishes the W&B run and flushes TensorBoard. ``resumed_at``: the
    iteration a resumed run continues from (None for a fresh or ``--finetune`` run): records past
    it, left by the run that was killed after that checkpoint, move out of metrics.jsonl
    (``supersede_after``) and out of TensorBoard (``purge_step``)."""

    def __init__(self, log_dir: str | None, enabled: bool, train_iters: int, tensorboard_dir: str | None = None,
                 wandb=None, extra: dict | None = None, resumed_at: int | None = None):
        self.enabled, self.train_iters, self.extra = enabled, train_iters, dict(extra or {})
        self.wandb = wandb if enabled else None
        self.path = os.path.join(log_dir, "metrics.jsonl") if (log_dir and enabled) else None
        if self.path:
            os.makedirs(log_dir, exist_ok=True)
            if resumed_at is not None:
                moved = supersede_after(self.path, resumed_at)
                if moved:
                    print(f"note: {self.path}: {moved} records past iteration {resumed_at} (from before the resume) "
                          f"moved to {os.path.basename(self.path)}.superseded")
        self.tb = None
        if enabled and tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = {"purge_step": resumed_at + 1} if resumed_at is not None else {}
                self.tb = SummaryWriter(tensorboard_dir, **purge)
            except ImportError:
                print("note: tensorboard is not installed; --tensorboard-dir ignored")

    def _write(self, record: dict) -> None:
        record = {**record, **self.extra}  # the task's fields (e.g. SFT's loss_normalization)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb:
            tag = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iteration", "split"):
                    self.tb.add_scalar(f"{tag}/{k}", v, record["iteration"])
        if self.wandb:
            self.wandb.log(record)

    def close(self) -> None:
        """Finish the W&B run and close the TensorBoard writer (each at most once)."""
        if self.wandb:
            self.wandb.finish()
            self.wandb = None
        if self.tb:
            self.tb.close()
            self.tb = None

    def train(self, rec: dict, seconds_left: float) -> None:
        if not self.enabled:
            return
        self._write(rec)
        print(f"iter {rec['iteration']}/{self.train_iters} | loss {rec.get('lm_loss', rec.get('loss')):.3f} | "
              f"lr {rec['lr']:.2e} | "
              f"gnorm {rec['grad_norm']:.2f} | {_k(rec['tokens_per_sec'])} tok/s | "
              f"{rec['tflops']:.2f} TFLOP/s | " + _mfu(rec)
              + (f"scale {rec['loss_scale']:.0f} | " if rec.get("loss_scale", 1.0) != 1.0 else "")
              + (f"skipped {rec['skipped_iters']} | " if rec.get("skipped_iters") else "")
              + f"eta {fmt_eta(seconds_left)}", flush=True)

    def eval(self, rec: dict) -> None:
        if not self.enabled:
            return
        self._write(dict(rec, split=rec.get("split", "valid")))
        per = "".join(f" | {k} {v:.3f}" for k, v in rec.get("per_source", {}).items())
        extra = (f" | ppl {rec['ppl']:.2f}" if "ppl" in rec else
                 f" | accuracy {rec['rewards/accuracies']:.3f}" if "rewards/accuracies" in rec else "")
        head = rec.get("lm_loss", rec.get("loss"))
        loss = f" loss {head:.3f}" if head is not None else ""
        print(f"eval iter {rec['iteration']} | {rec.get('split', 'valid')}{loss}{extra}{per}", flush=True)
