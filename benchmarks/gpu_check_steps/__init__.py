"""The steps of benchmarks/gpu_check.py, in the order they run.

A task is one function (``module:function``) yielding one or more results (the ``STEP`` lines);
it runs in the single-device worker process or in every rank of one ``torchrun`` launch, under its
own timeout (seconds, GPU / ``--cpu``). This module imports nothing heavy: the parent process
plans and supervises without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    where: str          # "single": the one-device worker; "dist": every rank of the multi-device launch
    target: str         # "module:function" inside gpu_check_steps
    timeout_gpu: float  # seconds; unverified until run on a GPU
    timeout_cpu: float

    def timeout(self, mode: str, scale: float = 1.0) -> float:
        return (self.timeout_gpu if mode == "gpu" else self.timeout_cpu) * scale


TASKS = [  # --cpu timeouts are generous: the test suite may share a loaded 2-core machine
    Task("env", "single", "env_attention:environment", 60, 30),
    Task("attention", "single", "env_attention:attention_backends", 300, 120),
    Task("loss", "single", "env_attention:loss_kernel", 60, 60),
    Task("train", "single", "training:train_loss_falls", 300, 120),
    Task("resume", "single", "training:save_resume", 240, 120),
    Task("zero1_save", "single", "training:zero1_save_memory", 180, 120),
    Task("host_syncs", "single", "training:host_syncs", 300, 120),
    Task("throughput", "single", "training:throughput", 420, 120),
    Task("parity_reference", "single", "training:parity_reference", 180, 120),
    Task("parity", "dist", "parallel:parity", 600, 300),
    Task("reshard", "dist", "parallel:reshard", 300, 120),
    Task("pipeline_probe", "dist", "parallel:pipeline_probe", 300, 120),
]

# seconds a launch may take to start (imports, process-group set-up) or to move between tasks
STARTUP = {"gpu": 300.0, "cpu": 120.0}


def by_name() -> dict:
    return {t.name: t for t in TASKS}
