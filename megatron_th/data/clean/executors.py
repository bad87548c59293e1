"""Running the stages with datatrove's executors: local processes, Slurm job arrays or Ray.

- local: one ``LocalPipelineExecutor`` per stage, run one after the other in this process; a stage
  with several tasks runs them in a pool of ``workers`` processes (datatrove's ``forkserver``).
  A progress bar (``megatron_th.utils.bars``) follows the bytes the stage's readers have gone
  through (each task writes its count to ``OUT/logs/NN_stage/progress/``), and one line per stage
  says how long it took.
- slurm: one ``SlurmPipelineExecutor`` per stage, each depending on the one before (``afterok``);
  ``run`` submits them all with ``sbatch`` and returns (``datatrove``'s ``jobs_status`` or
  ``squeue`` follow them); ``OUT/stats.json`` appears when the last job ends.
- ray: one ``RayPipelineExecutor`` per stage, run in order on the connected Ray cluster (needs
  ``pip install ray``).

Reruns resume: each executor skips the tasks marked complete in its logging folder
(``OUT/logs/NN_stage/completions/``), datatrove's own mechanism.

Console: datatrove logs every task at INFO to stderr. Unless ``verbose``, the local executor gives
its tasks local ranks from 1 (datatrove then shows only their errors on the console; each task's
full log stays in ``OUT/logs/NN_stage/logs/``) and the CLI sets ``LOGURU_LEVEL=WARNING`` before
datatrove is imported, which quiets the per-stage summaries.
"""
from __future__ import annotations

import glob
import os
import resource
import sys
import threading
import time

from datatrove.executor import LocalPipelineExecutor

from megatron_th.utils.bars import progress_bar, write

EXECUTORS = ("local", "slurm", "ray")


class QuietLocalExecutor(LocalPipelineExecutor):
    """``LocalPipelineExecutor`` whose tasks log to the console only their errors (``quiet``)."""

    def __init__(self, *args, quiet: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.quiet = quiet

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        return super()._run_for_rank(rank, local_rank + 1 if self.quiet else local_rank, node_rank)


class _ProgressWatch:
    """Sums ``folder/*`` (bytes read per task) into a progress bar every half second."""

    def __init__(self, folder: str, total: int, desc: str, disable: bool):
        self.folder, self.stop = folder, threading.Event()
        self.bar = progress_bar(total, desc, unit="B", unit_scale=True, disable=disable or not total)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _done(self) -> int:
        total = 0
        for path in glob.glob(os.path.join(self.folder, "[0-9]*[0-9]")):
            try:
                with open(path) as f:
                    total += int(f.read() or 0)
            except (OSError, ValueError):
                pass
        return total

    def _loop(self):
        while not self.stop.wait(0.5):
            self.bar.update(max(0, self._done() - self.bar.n))

    def close(self):
        self.stop.set()
        self.thread.join()
        self.bar.update(max(0, self._done() - self.bar.n))
        self.bar.close()


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_local(plan, stages, workers: int = -1, quiet: bool = True, progress: bool = True,
              start_method: str = "forkserver", log=None) -> dict:
    """Runs every stage in order with ``QuietLocalExecutor``; ``workers`` -1: one per CPU.
    Returns ``{stage name: (wall seconds, CPU seconds of this process and its workers)}`` for the
    stages that ran."""
    log = log or (lambda m: write(m, file=sys.stderr))
    if start_method == "forkserver":  # workers fork from a server that has imported the steps once
        import multiprocess

        multiprocess.get_context("forkserver").set_forkserver_preload(["megatron_th.data.clean.stages"])
    seconds = {}
    for i, stage in enumerate(stages, 1):
        folder = plan.logs(i, stage.name)
        w = max(1, min((os.cpu_count() or 1) if workers == -1 else workers, stage.tasks))
        ex = QuietLocalExecutor(stage.pipeline, tasks=stage.tasks, workers=w, logging_dir=folder,
                                start_method=start_method, quiet=quiet)
        if all(ex.is_rank_completed(r) for r in range(stage.tasks)):
            if progress:
                log(f"[{i}/{len(stages)}] {stage.name}: already complete, skipped")
            continue
        t0, cpu0 = time.monotonic(), _cpu_seconds()
        watch = _ProgressWatch(os.path.join(folder, "progress"), stage.progress_bytes,
                               f"[{i}/{len(stages)}] {stage.name}", disable=not progress)
        try:
            ex.run()
        finally:
            watch.close()
        incomplete = ex.get_incomplete_ranks()
        if incomplete:
            raise RuntimeError(f"stage {stage.name}: tasks {incomplete} did not complete; see {folder}/logs")
        seconds[stage.name] = (time.monotonic() - t0, _cpu_seconds() - cpu0)
        if progress:
            log(f"[{i}/{len(stages)}] {stage.name}: {stage.tasks} task{'s' * (stage.tasks != 1)} "
                f"in {seconds[stage.name][0]:.1f}s")
    return seconds


def submit_slurm(plan, stages, partition: str, time_limit: str = "24:00:00", cpus_per_task: int = 1,
                 mem_per_cpu_gb: float = 2, workers: int = -1, env_command: str | None = None,
                 job_prefix: str = "clean") -> list:
    """Submits every stage as a Slurm job array depending on the previous one; returns the
    executors (``job_id`` set). ``env_command`` runs first in each job (default: put this Python's
    ``bin`` directory first on PATH, so that ``launch_pickled_pipeline`` is found)."""
    from datatrove.executor import SlurmPipelineExecutor

    if env_command is None:
        env_command = f"export PATH={os.path.dirname(sys.executable)}:$PATH"
    executors, previous = [], None
    for i, stage in enumerate(stages, 1):
        previous = SlurmPipelineExecutor(
            stage.pipeline, tasks=stage.tasks, time=time_limit, partition=partition,
            cpus_per_task=cpus_per_task, mem_per_cpu_gb=mem_per_cpu_gb,
            workers=workers if stage.tasks > 1 else -1, job_name=f"{job_prefix}_{stage.name}",
            logging_dir=plan.logs(i, stage.name), depends=previous, env_command=env_command)
        executors.append(previous)
    previous.run()
    return executors


def run_ray(plan, stages, workers: int = -1) -> None:
    """Runs every stage in order with ``RayPipelineExecutor`` (raises ImportError without ray)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ImportError("--executor ray needs Ray (`pip install ray`)") from None
    from datatrove.executor.ray import RayPipelineExecutor

    previous = None
    for i, stage in enumerate(stages, 1):
        previous = RayPipelineExecutor(stage.pipeline, tasks=stage.tasks,
                                       workers=workers if stage.tasks > 1 else -1,
                                       logging_dir=plan.logs(i, stage.name), depends=previous)
    previous.run()
