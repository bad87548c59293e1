"""The last stage: ``OUT/stats.json``, ``OUT/removed/NNNNN.jsonl.gz`` and the merged ``.bin/.idx``.

``stats.json`` adds up the counters the steps kept in datatrove's per-task stats files
(``OUT/logs/NN_stage/stats/NNNNN.json``) of the ``filter`` and ``write`` stages::

    {"input_docs": n,                      # records read (blank lines are not records)
     "kept_docs": n,
     "removed": {"stage/reason": n, ...},  # input_docs = kept_docs + sum(removed)
     "pii": {"email": n, "phone": n, "th_id": n},          # replacements in kept documents
     "lines_removed": {"boilerplate/repeated": n, "boilerplate/pattern": n},
     "megatron": {"prefix": P, "documents": n, "tokens": n}}   # with --tokenizer-model only

``removed/NNNNN.jsonl.gz`` is task NNNNN's removed records of every step in pipeline order (gzip
members joined: a valid gzip file); ``kept/NNNNN.jsonl.gz`` exists for every task (empty when the
task kept nothing), so that both folders list the same task numbers.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
from collections import Counter

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from megatron_th.data.clean.megatron_writer import merge_shards
from megatron_th.data.indexed import IndexedDataset


def _total(value) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def count_stats(stage_dirs: list[str]) -> Counter:
    """Sum, over the per-task stats files of ``stage_dirs``, of every counter of every step."""
    out: Counter = Counter()
    for d in stage_dirs:
        for path in sorted(glob.glob(os.path.join(d, "stats", "*.json"))):
            with open(path) as f:
                for step in json.load(f):
                    for key, value in step.get("stats", {}).items():
                        out[key] += _total(value)
    return out


def summarize(counts: Counter) -> dict:
    """The stats.json mapping (without ``megatron``) from summed counters."""
    def pick(prefix: str, rename=lambda k: k) -> dict:
        return {rename(k[len(prefix):]): int(v) for k, v in sorted(counts.items()) if k.startswith(prefix) and v}

    pii = {"email": 0, "phone": 0, "th_id": 0}
    pii.update(pick("pii="))
    return {"input_docs": int(counts["input_docs"]), "kept_docs": int(counts["kept_docs"]),
            "removed": pick("removed_by="), "pii": pii,
            "lines_removed": pick("boilerplate_lines=", lambda k: f"boilerplate/{k}")}


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def join_removed(work_removed: str, out_removed: str, tasks: int) -> None:
    """``out_removed/{r:05d}.jsonl.gz`` = the steps' files of task r, in step order (atomic)."""
    os.makedirs(out_removed, exist_ok=True)
    steps = sorted(glob.glob(os.path.join(work_removed, "*")))
    for r in range(tasks):
        dest = os.path.join(out_removed, f"{r:05d}.jsonl.gz")
        parts = [p for p in (os.path.join(s, f"{r:05d}.jsonl.gz") for s in steps) if os.path.exists(p)]
        with open(f"{dest}.tmp", "wb") as out:
            if not parts:
                out.write(gzip.compress(b""))
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        os.replace(f"{dest}.tmp", dest)


class Finalize(PipelineStep):
    """One task: writes stats.json, joins the removed files, fills in empty kept files and, with a
    tokenizer, merges the per-task ``.bin/.idx`` shards into ``{output_prefix}_{key}_document``."""

    type = "💽 - WRITER"
    name = "📊 finalize"

    def __init__(self, plan, stage_dirs: list[str]):
        super().__init__()
        self.plan, self.stage_dirs = plan, stage_dirs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        plan = self.plan
        kept = os.path.join(plan.output_dir, "kept")
        os.makedirs(kept, exist_ok=True)
        for r in range(plan.tasks):
            path = os.path.join(kept, f"{r:05d}.jsonl.gz")
            if not os.path.exists(path):
                with open(f"{path}.tmp", "wb") as f:
                    f.write(gzip.compress(b""))
                os.replace(f"{path}.tmp", path)
        join_removed(plan.work("removed"), os.path.join(plan.output_dir, "removed"), plan.tasks)
        counts = count_stats(self.stage_dirs)
        stats = summarize(counts)
        if plan.tokenizer_model:
            prefix = merge_shards(plan.work("megatron"), plan.tasks, plan.text_key, plan.output_prefix)
            ds = IndexedDataset(prefix)
            stats["megatron"] = {"prefix": prefix, "documents": len(ds), "tokens": ds.num_tokens}
        accounted = stats["kept_docs"] + sum(stats["removed"].values())
        if accounted != stats["input_docs"]:
            logger.warning(f"stats: {stats['input_docs']} records read but {accounted} kept or removed")
        _write_json(os.path.join(plan.output_dir, "stats.json"), stats)
        self.stat_update("kept", value=stats["kept_docs"])
