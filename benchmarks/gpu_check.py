#!/usr/bin/env python
"""gpu_check: prove megatron_th's GPU / NCCL path on a fresh node with one command.

    bash benchmarks/gpu_check.sh [--cpu] [--out gpu_check.json] [--nproc N] [--only TASK,...]

Prints one line per step, ``STEP <name> PASS|FAIL|SKIP <value> <unit> | <detail>``, writes every
result (step, status, value, unit, detail, seconds) to ``--out``, and exits 1 if any step failed.

One GPU: env (versions, GPUs); attention_<backend> (every backend vs an fp32 reference, output and
q/k/v grads, packed documents with 1-token ones); train_loss_falls (~100M model, bf16);
resume_matches (save -> resume == uninterrupted, bf16 tolerance 2e-2); zero1_save_peak (memory of
a Zero-1 checkpoint save); host_syncs (per training step, independent of the layer count);
throughput_tokens / _tflops / _mfu (~1B model); parity_reference (the 1-GPU baseline).
Two or more GPUs (one torchrun launch, NCCL): parity_<layout> for TP+SP, 1F1B, interleaved, DP,
Zero-1 and 3D against one GPU with --no-tf32 (loss 1e-4, grad norm 1e-3 relative);
reshard_<A>_to_<B> (save at one layout, resume at another); pipeline_probe (PP over every GPU with
16 MiB messages under a timeout: a p2p deadlock shows as a FAIL with every rank's stack in the log).

``--cpu`` runs the same steps on CPU with gloo, fp32 and small sizes (one launch for the one-device
steps, one of 4 ranks for the rest): the test
suite runs it (tests/test_gpu_check.py). Steps that need CUDA (flash, te, flex backward) SKIP there.

UNVERIFIED: the GPU steps, their tolerances and the expected time (~6 minutes on one GPU, ~8 on
eight) have not been run on a GPU yet; only the --cpu path is tested.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

from gpu_check_steps import STARTUP, TASKS, sizes  # noqa: E402
from gpu_check_steps.launch import Launcher  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="CPU + gloo, fp32, small sizes (what the test suite runs)")
    p.add_argument("--out", default="gpu_check.json", help="JSON report (default: ./gpu_check.json)")
    p.add_argument("--nproc", type=int, default=None,
                   help=f"ranks of the multi-device steps (default: every visible GPU; --cpu: {sizes.MAX_CPU_RANKS}, "
                        f"at most {sizes.MAX_CPU_RANKS})")
    p.add_argument("--only", default=None, help="comma-separated tasks to run: " + ",".join(t.name for t in TASKS))
    p.add_argument("--workdir", default=None, help="scratch directory (default: a new temporary one, removed "
                   "when every step passed)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, checkpoints)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every step's timeout")
    p.add_argument("--inject", action="append", default=[], metavar="fail:STEP|hang:TASK",
                   help="self-test of the checker: report STEP as failed, or make TASK hang until its timeout")
    p.add_argument("--worker", choices=["single", "dist"], help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Report:
    """Prints each result as one STEP line and rewrites the JSON report after each (a killed check
    still leaves what it found)."""

    def __init__(self, path: str, meta: dict):
        self.path, self.meta, self.steps, self.t0 = path, meta, [], time.monotonic()

    def __call__(self, r: dict) -> None:
        r.setdefault("detail", "")
        r.setdefault("seconds", 0.0)
        value = "nan" if r.get("value") is None else f"{r['value']:.4g}"
        detail = " ".join(str(r["detail"]).split())
        print(f"STEP {r['step']} {r['status']} {value} {r['unit']}" + (f" | {detail}" if detail else ""), flush=True)
        self.steps.append(r)
        self.write()

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.steps)

    def write(self) -> None:
        out = dict(self.meta, seconds=round(time.monotonic() - self.t0, 1), passed=self.count("FAIL") == 0,
                   steps=self.steps)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, self.path)


def child_env(mode: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH")) if x)
    if mode == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu never touches a GPU, even on a GPU node
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        from gpu_check_steps.worker import main as worker_main
        return worker_main(a.worker, a.plan)
    mode = "cpu" if a.cpu else "gpu"
    known = {t.name for t in TASKS}
    only = [x for x in (a.only or "").split(",") if x]
    bad = [x for x in only if x not in known] + [
        x for x in a.inject if not (x.startswith(("fail:", "hang:")) and x.split(":", 1)[1])]
    if bad:
        print(f"error: unknown --only task or --inject spec: {', '.join(bad)} (tasks: {', '.join(sorted(known))})",
              file=sys.stderr)
        return 2
    if a.nproc is not None and a.nproc < 1:
        print("error: --nproc must be >= 1", file=sys.stderr)
        return 2
    if a.timeout_scale <= 0:
        print(f"error: --timeout-scale must be positive, got {a.timeout_scale}", file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        print(f"error: --out {a.out}: cannot write the report there", file=sys.stderr)
        return 2
    inject = {"fail": [x[5:] for x in a.inject if x.startswith("fail:")],
              "hang": [x[5:] for x in a.inject if x.startswith("hang:")]}
    workdir = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    os.makedirs(workdir, exist_ok=True)
    meta = {"mode": mode, "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "workdir": workdir, "unverified_on_gpu": True}
    report = Report(a.out, meta)
    timeouts = {t.name: t.timeout(mode, a.timeout_scale) for t in TASKS}
    py = sys.executable
    print(f"gpu_check: {mode} mode ({'gloo, fp32, small sizes' if a.cpu else 'NCCL, bf16'}); work directory {workdir}",
          flush=True)
    launcher = Launcher(workdir, mode, timeouts, STARTUP[mode] * a.timeout_scale, report, child_env(mode),
                        inject, a.nproc)
    selected = [t for t in TASKS if not only or t.name in only]
    single = [t.name for t in selected if t.where == "single"]
    dist = [t.name for t in selected if t.where == "dist"]
    if single:
        launcher.run_group(single, lambda plan: [py, os.path.abspath(__file__), "--worker", "single", "--plan", plan],
                           "single")
    if dist:
        if a.cpu:
            world = sizes.dist_world(mode, a.nproc, 0)
        else:  # the GPUs torch saw in the env step, else those nvidia-smi lists
            gpus = next((r["value"] for r in report.steps if r["step"] == "env" and r["value"] is not None), None)
            world = sizes.dist_world(mode, a.nproc, int(gpus) if gpus is not None else _count_gpus())
        if world < 2:
            for name in dist:
                report({"step": name, "status": "SKIP", "value": None, "unit": "-",
                        "detail": f"needs 2 or more {'ranks' if a.cpu else 'GPUs'}; {world} available here"
                                  + (f" with --nproc {a.nproc}" if a.nproc else "")})
        else:
            launcher.run_group(dist, lambda plan: [py, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc-per-node", str(world), os.path.abspath(__file__),
                                                   "--worker", "dist", "--plan", plan], "dist")
    report.write()
    failed, skipped, passed = report.count("FAIL"), report.count("SKIP"), report.count("PASS")
    print(f"gpu_check: {passed} passed, {failed} failed, {skipped} skipped in {time.monotonic() - report.t0:.0f} s "
          f"({launcher.launches} launches); report {os.path.abspath(a.out)}", flush=True)
    if failed or a.keep or a.workdir:
        print(f"gpu_check: logs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _count_gpus() -> int:
    """GPUs nvidia-smi lists (when the env step did not run)."""
    from gpu_check_steps.env_attention import nvidia_smi
    return len(nvidia_smi()[0])


if __name__ == "__main__":
    sys.exit(main())
