"""GPU catalog: dense (no sparsity) peak TFLOP/s per precision and memory, from vendor datasheets.

fp32 means what a training matmul in fp32 gets with TF32 allowed (the default for fp32 on CUDA,
``--tf32``): TF32 tensor cores where the card has them (A100 and later; PyTorch needs
``torch.backends.cuda.matmul.allow_tf32``), plain FP32 on V100. fp32_ieee is the plain
(non-tensor-core) FP32 figure, what fp32 matmuls get under ``--no-tf32``. Memory
is the nominal capacity in GiB; ``nvidia-smi`` shows a little less (an H100 80GB reports 81559
MiB), which the estimator's headroom covers. Sources are listed in docs/estimate.md.

``training/metrics.py`` uses the same table for MFU on a CUDA device (matched by name).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str                 # the --gpu value
    match: tuple              # lower-case substrings of torch.cuda.get_device_name() that identify it
    bf16: float               # dense peak TFLOP/s
    fp16: float
    fp32: float
    memory_gib: float
    note: str = ""
    fp32_ieee: float = 0.0    # plain FP32 (CUDA cores, no TF32) dense peak TFLOP/s; 0: same as fp32

    def peak(self, precision: str, tf32: bool = True) -> float:
        """Dense peak TFLOP/s for "bf16" | "fp16" | "fp32" (0 when the card has no such units); for
        fp32 the TF32 tensor-core figure when ``tf32`` (where the card has TF32), else plain FP32."""
        if precision == "fp32" and not tf32:
            return self.fp32_ieee or self.fp32
        return getattr(self, precision)


# Order matters for matching device names: the first entry whose substrings all occur wins
# ("a100" before "a10", PCIe before SXM).
CATALOG = [
    GPU("a100-40g", ("a100", "40gb"), 312.0, 312.0, 156.0, 40.0, "A100 SXM4 40GB", 19.5),
    GPU("a100-80g", ("a100",), 312.0, 312.0, 156.0, 80.0, "A100 SXM4 80GB", 19.5),
    GPU("h100-pcie", ("h100", "pcie"), 756.0, 756.0, 378.0, 80.0, "H100 PCIe 80GB", 51.0),
    GPU("h100-80g", ("h100",), 989.0, 989.0, 495.0, 80.0, "H100 SXM5 80GB", 67.0),
    GPU("h200", ("h200",), 989.0, 989.0, 495.0, 141.0, "H200 SXM 141GB", 67.0),
    GPU("l40s", ("l40s",), 362.0, 362.0, 183.0, 48.0, "L40S 48GB", 91.6),
    GPU("a10", ("a10",), 125.0, 125.0, 62.5, 24.0, "A10 24GB", 31.2),
    GPU("v100-32g", ("v100", "32gb"), 0.0, 125.0, 15.7, 32.0, "V100 SXM2 32GB (no bf16)"),
    GPU("v100-16g", ("v100",), 0.0, 125.0, 15.7, 16.0, "V100 SXM2 16GB (no bf16)"),
]
BY_NAME = {g.name: g for g in CATALOG}


class UnknownGPUError(ValueError):
    pass


def get_gpu(name: str) -> GPU:
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise UnknownGPUError(f"--gpu {name}: unknown GPU; known: {', '.join(BY_NAME)}") from None


def match_device(device_name: str) -> GPU | None:
    """The catalog entry for a CUDA device name such as "NVIDIA A100-SXM4-80GB", or None."""
    low = device_name.lower()
    for g in CATALOG:
        if all(m in low for m in g.match):
            return g
    return None
