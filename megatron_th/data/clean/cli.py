"""``tools/clean_data.py``: a raw Thai+English crawl -> cleaned jsonl.gz (and Megatron .bin/.idx).

    python tools/clean_data.py --input 'crawl/*.jsonl.gz' --output-dir clean/ [--config FILE.yaml]
        [--tasks N] [--workers N] [--executor local|slurm|ray]
        [--tokenizer-model th_en.model --output-prefix data/th_web --append-eod]

Outputs: ``OUT/kept/NNNNN.jsonl.gz`` (every input field kept, the text cleaned),
``OUT/removed/NNNNN.jsonl.gz`` (each removed record with ``removed_by = "stage/reason"``),
``OUT/stats.json``; with a tokenizer also ``{output_prefix}_{key}_document.bin/.idx``, equal to
what ``tools/preprocess_data.py`` makes of the kept files. Intermediate files are under
``OUT/work/``, datatrove's logs, stats and completion marks under ``OUT/logs/``. A rerun with the
same settings resumes from the completed tasks; other settings in the same ``--output-dir`` are
refused. The kept set does not depend on ``--tasks`` or ``--workers``. Bad input is one
``error:`` line and exit code 1 (2 for bad flags), before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_th.cli.parser import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Clean a Thai+English web crawl (boilerplate, quality filters, "
                       "near-duplicates, PII) on datatrove; optionally write Megatron .bin/.idx.")
    p.add_argument("--input", nargs="+", required=True, help="jsonl / jsonl.gz / parquet files or globs")
    p.add_argument("--output-dir", required=True, help="kept/, removed/, stats.json, work/ and logs/ go here")
    p.add_argument("--config", default=None, help="YAML laid over megatron_th/data/clean/thai.yaml")
    p.add_argument("--json-keys", default="text", metavar="KEY", help="the text field (one key; default text)")
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks per stage (default: min(input files, CPUs)); a task reads whole files")
    p.add_argument("--workers", type=int, default=-1,
                   help="tasks run at once (-1: one per CPU with --executor local, no limit on Slurm and Ray)")
    p.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
    p.add_argument("--tokenizer-model", default=None, help="write .bin/.idx with this tokenizer (as preprocess_data)")
    p.add_argument("--output-prefix", default=None, help="prefix of the .bin/.idx (with --tokenizer-model)")
    p.add_argument("--append-eod", action="store_true", help="append EOD to every document in the .bin/.idx")
    p.add_argument("--show-errors", type=int, default=5, help="unreadable records each task logs as file:line")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition (required with --executor slurm)")
    p.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task")
    p.add_argument("--slurm-cpus-per-task", type=int, default=1)
    p.add_argument("--slurm-mem-per-cpu-gb", type=float, default=2)
    p.add_argument("--slurm-env-command", default=None,
                   help="shell line run first in each job (default: this Python's bin/ first on PATH)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="datatrove's task logs on the console too")
    return p


class UsageError(ValueError):
    """A flag or input that cannot be used (exit code 1 with one error line)."""


def _plan(args):
    from megatron_th.data import readers
    from megatron_th.data.clean.config import load_config
    from megatron_th.data.clean.stages import Plan

    paths = sorted(set(readers.expand_inputs(args.input)))
    if bool(args.tokenizer_model) != bool(args.output_prefix):
        raise UsageError("--tokenizer-model and --output-prefix go together")
    if args.tokenizer_model:
        from megatron_th.data.tokenizer import load_tokenizer
        load_tokenizer(args.tokenizer_model)  # fails now, not in the last stage
    tasks = args.tasks if args.tasks is not None else max(1, min(len(paths), os.cpu_count() or 1))
    if tasks < 1:
        raise UsageError("--tasks must be >= 1")
    if args.executor == "slurm" and not args.slurm_partition:
        raise UsageError("--executor slurm needs --slurm-partition")
    return Plan(paths=paths, output_dir=os.path.abspath(args.output_dir), config=load_config(args.config),
                tasks=tasks, text_key=args.json_keys, tokenizer_model=args.tokenizer_model,
                output_prefix=os.path.abspath(args.output_prefix) if args.output_prefix else None,
                append_eod=args.append_eod, show_errors=args.show_errors)


def fingerprint(plan) -> dict:
    """What decides the output: inputs (path, size, mtime), settings, task count."""
    return {"inputs": [[p, os.path.getsize(p), int(os.path.getmtime(p))] for p in plan.paths],
            "config": plan.config, "tasks": plan.tasks, "json_keys": plan.text_key,
            "tokenizer_model": plan.tokenizer_model, "output_prefix": plan.output_prefix,
            "append_eod": plan.append_eod}


def check_resume(plan) -> None:
    """Writes ``OUT/work/run.json``, or refuses an output dir that holds a run with other settings."""
    path = plan.work("run.json")
    new = json.loads(json.dumps(fingerprint(plan)))
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise UsageError(f"--output-dir {plan.output_dir} holds a run made with other {', '.join(diff)}; "
                             "use another --output-dir, or remove it to start over")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(new, f, indent=1, ensure_ascii=False)
    os.replace(f"{path}.tmp", path)


def run(args, start_method: str = "forkserver") -> dict | None:
    """Cleans as ``args`` say; returns stats.json's content (None after a Slurm submission)."""
    from megatron_th.data.clean import executors
    from megatron_th.data.clean.stages import build_stages

    plan = _plan(args)
    stages = build_stages(plan)
    check_resume(plan)
    if args.executor == "slurm":
        jobs = executors.submit_slurm(plan, stages, args.slurm_partition, args.slurm_time, args.slurm_cpus_per_task,
                                      args.slurm_mem_per_cpu_gb, args.workers, args.slurm_env_command)
        print(f"submitted {len(jobs)} Slurm jobs (last: {jobs[-1].job_id}); "
              f"{plan.output_dir}/stats.json appears when it ends", file=sys.stderr)
        return None
    if args.executor == "ray":
        executors.run_ray(plan, stages, args.workers)
    else:
        executors.run_local(plan, stages, args.workers, quiet=not args.verbose, progress=not args.quiet,
                            start_method=start_method)
    with open(os.path.join(plan.output_dir, "stats.json")) as f:
        stats = json.load(f)
    if not args.quiet:
        removed = sum(stats["removed"].values())
        print(f"done: {stats['input_docs']} records, {stats['kept_docs']} kept, {removed} removed; "
              f"see {plan.output_dir}/stats.json", file=sys.stderr)
    return stats


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers == 0 or args.workers < -1:
        print("error: --workers must be >= 1 (or -1 for all tasks at once)", file=sys.stderr)
        return 2
    if not args.verbose:
        os.environ.setdefault("LOGURU_LEVEL", "WARNING")  # before datatrove imports loguru
    try:
        import datatrove  # noqa: F401
        import pythainlp  # noqa: F401
    except ImportError as e:
        print(f"error: cleaning needs the [data] extra (`pip install megatron_th[data]`): {e}", file=sys.stderr)
        return 1
    from megatron_th.data.clean.config import ConfigError
    from megatron_th.data.indexed import IndexedDatasetError

    try:
        run(args)
    except (UsageError, ConfigError, FileNotFoundError, ValueError, ImportError, OSError,
            IndexedDatasetError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
