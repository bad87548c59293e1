"""Training objectives behind one seam (``Task``): pretraining, SFT, and what comes next.

The loop (training/pretrain.py) is one loop for every objective. What differs is asked of the
task: which datasets and batches to build, the loss of a micro-batch and the global count it is
divided by, the statistics to log, and the evaluation summary. A new objective is one new module
here plus one line in ``TASKS``.
"""
from __future__ import annotations

from megatron_th.training.tasks.base import Task
from megatron_th.training.tasks.lm import LanguageModelTask


def _sft(cfg):
    from megatron_th.training.tasks.sft import SFTTask
    return SFTTask(cfg)


def _dpo(cfg):
    from megatron_th.training.tasks.dpo import DPOTask
    return DPOTask(cfg)


TASKS = {"pretrain": LanguageModelTask, "sft": _sft, "dpo": _dpo}


def task_name(cfg) -> str:
    """The objective ``cfg`` asks for: ``dpo`` with ``--dpo``, ``sft`` with ``--sft``, else ``pretrain``."""
    if getattr(cfg.train, "dpo", False):
        return "dpo"
    return "sft" if getattr(cfg.train, "sft", False) else "pretrain"


def make_task(cfg) -> Task:
    """The Task object of ``cfg`` (see ``task_name``)."""
    return TASKS[task_name(cfg)](cfg)


__all__ = ["Task", "LanguageModelTask", "make_task", "task_name", "TASKS"]
