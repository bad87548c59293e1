#!/usr/bin/env python
"""Memory per rank under data parallelism: measured storage vs the analytic bytes per parameter.

    python benchmarks/memory_scaling.py            # about 2-4 minutes on 2 CPU cores

For DP in 1, 2, 4, 8 (world = DP, TP = PP = 1) this launches DP processes with
``python -m torch.distributed.run --standalone`` on the worker entry of this same file. Each
process trains the tiny model (examples/tiny.yaml, embedded corpus; global batch 8, micro-batch 1,
sequence 128, one thread, 2 iterations, no checkpoint) four times in a row: fp32 and bf16, each
with and without --use-distributed-optimizer (Zero-1). After each run rank 0 records

- the bytes held in tensor storage (training/memory.py ``storage_bytes``): weights, gradients
  (the contiguous gradient buffer: fp32 under bf16), fp32 master copies (bf16 only: under fp32
  the parameter is its own master) and the Adam moments;
- the analytic value ``analytic_bytes_per_param(precision, DP, zero) x parameters on the rank``
  (Megatron's table: bf16 18 or 6 + 12/d, fp32 16 or 8 + 8/d) and measured / analytic. The
  only expected difference is bucket padding: every gradient bucket (and under Zero-1 the
  parameter buffer) is padded to a multiple of DP, a few elements;
- the activation bytes of one forward + backward of one micro-batch ([1, 128] random tokens
  below 8000) on the trained model: the sum of the storages saved for backward, captured with
  ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, storages of the
  model's parameters excluded (weights saved by a matmul are not activations). That sum is the
  activation memory alive when backward starts, i.e. its peak for one micro-batch. It should not
  depend on DP or Zero-1, only on the precision (nothing asserts it; the table shows it).

Prints a Markdown table and writes benchmarks/results/memory_scaling.json (raw bytes, per-rank
totals, buffer padding, timings). Not a test: nothing here fails on a ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "examples", "tiny.yaml")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "memory_scaling.json")
SEQ, MBS, GBS, VOCAB_BELOW = 128, 1, 8, 8000
VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
MiB = 2 ** 20


def train_argv(precision: str, zero: bool, iters: int) -> list[str]:
    argv = ["--config", CONFIG, "--global-batch-size", str(GBS), "--micro-batch-size", str(MBS),
            "--seq-length", str(SEQ), "--num-threads", "1", "--eval-interval", "1000000",
            "--log-interval", "100", "--train-iters", str(iters)]
    if precision == "bf16":
        argv.append("--bf16")
    if zero:
        argv.append("--use-distributed-optimizer")
    return argv


# ----------------------------------------------------------------------------------------------
# worker (one rank of one DP layout; runs every variant in turn)

def activation_bytes(model, param_ptrs: set, seed: int = 0) -> dict:
    """One forward + backward of a [MBS, SEQ] micro-batch of random tokens; bytes of the storages
    saved for backward (training/memory.py ``saved_activation_bytes``, shared with the tests)."""
    import torch

    from megatron_th.training.memory import saved_activation_bytes

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB_BELOW, (MBS, SEQ), generator=gen)
    labels = torch.randint(0, VOCAB_BELOW, (MBS, SEQ), generator=gen)
    return saved_activation_bytes(model, {"tokens": tokens, "labels": labels}, torch.ones(MBS, SEQ), param_ptrs)


def run_variant(precision: str, zero: bool, iters: int) -> dict | None:
    import gc

    import torch
    import torch.distributed as dist

    from megatron_th.config import parse_config
    from megatron_th.training.memory import analytic_bytes_per_param, storage_bytes
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(train_argv(precision, zero, iters))
    cfg.train.save = None          # the YAML sets save: runs/tiny; this benchmark writes no checkpoint
    cfg.train.save_interval = None
    t0 = time.perf_counter()
    res = pretrain(cfg, log=lambda *a, **k: None)
    train_seconds = time.perf_counter() - t0
    groups, named, buffers = res["groups"], res["named_params"], res["buffers"]
    mem = storage_bytes(named, res["optimizer"], buffers)
    nparams = sum(p.numel() for _, p in named)
    dp = groups.dp
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    totals = [mem["total"]]
    if world > 1:
        totals = [None] * world
        dist.all_gather_object(totals, mem["total"])
    out = None
    if rank == 0:
        model = res["model"].chunks[0]
        param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        t1 = time.perf_counter()
        act = activation_bytes(model, param_ptrs)
        bpp = analytic_bytes_per_param(precision, dp, zero)
        out = {"precision": precision, "dp": dp, "distributed_optimizer": zero, "world": world,
               "parameters": nparams, "buffer_numel": buffers.numel, "padding": buffers.numel - nparams,
               "measured": mem, "analytic_bytes_per_param": bpp, "analytic": bpp * nparams,
               "ratio": mem["total"] / (bpp * nparams), "per_rank_total": totals, **act,
               "losses": res["losses"], "train_seconds": train_seconds,
               "activation_seconds": time.perf_counter() - t1}
    del res, named, buffers, groups
    gc.collect()
    if world > 1:
        dist.barrier()
    return out


def worker(args) -> int:
    rows = []
    for v in args.variants.split(","):
        precision, zero = v.split(":")
        row = run_variant(precision, zero == "1", args.iters)
        if row is not None:
            rows.append(row)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump(rows, f)
    return 0


# ----------------------------------------------------------------------------------------------
# driver

def launch(dp: int, variants: list, iters: int, timeout: float, tmp: str) -> tuple[list, float]:
    out = os.path.join(tmp, f"dp{dp}.json")
    log = os.path.join(tmp, f"dp{dp}.log")
    spec = ",".join(f"{p}:{int(z)}" for p, z in variants)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={dp}",
           os.path.abspath(__file__), "--worker", "--out", out, "--variants", spec, "--iters", str(iters)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its ranks (our own session)
            proc.wait()
            rc = "timeout"
    seconds = time.perf_counter() - t0
    if rc != 0 or not os.path.exists(out):
        with open(log) as fh:
            tail = fh.read()[-4000:]
        raise RuntimeError(f"DP={dp} launch failed ({rc}) after {seconds:.0f}s; log tail:\n{tail}")
    with open(out) as fh:
        return json.load(fh), seconds


def table(rows: list) -> str:
    head = ["precision", "DP", "distributed optimizer", "weights MiB", "grads MiB", "master MiB",
            "moments MiB", "total measured MiB", "analytic MiB", "measured/analytic", "activations MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 8) + "|"]
    for r in rows:
        m = r["measured"]
        cells = [r["precision"], str(r["dp"]), "yes" if r["distributed_optimizer"] else "no",
                 *(f"{m[k] / MiB:.2f}" for k in ("params", "grads", "master", "moments", "total")),
                 f"{r['analytic'] / MiB:.2f}", f"{r['ratio']:.4f}", f"{r['activation_bytes'] / MiB:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dp", type=int, nargs="+", default=[1, 2, 4, 8], help="DP sizes (= world sizes).")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--iters", type=int, default=2, help="Training iterations per run.")
    ap.add_argument("--timeout", type=float, default=600.0, help="Seconds per DP launch before it is killed.")
    ap.add_argument("--json", default=RESULTS, help="Where to write the results.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--variants", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    variants = [v for v in VARIANTS if v[0] in args.precisions]
    start = time.perf_counter()
    rows, launches = [], {}
    with tempfile.TemporaryDirectory(prefix="memscale_") as tmp:
        for dp in args.dp:
            got, seconds = launch(dp, variants, args.iters, args.timeout, tmp)
            launches[dp] = seconds
            rows += got
            print(f"DP={dp}: {len(got)} runs in {seconds:.1f}s", file=sys.stderr, flush=True)
    total_seconds = time.perf_counter() - start
    order = {p: i for i, p in enumerate(args.precisions)}
    rows.sort(key=lambda r: (order[r["precision"]], r["distributed_optimizer"], r["dp"]))

    print(table(rows))
    n = rows[0]["parameters"] if rows else 0
    pads = sorted({(r["dp"], r["padding"]) for r in rows})
    print(f"\n{n:,} parameters per rank (TP = PP = 1); bucket padding (elements) by DP: "
          + ", ".join(f"{d}: {p}" for d, p in pads))
    uneven = [r for r in rows if len(set(r["per_rank_total"])) > 1]
    print("per-rank totals equal on every rank" if not uneven else
          "per-rank totals differ: " + "; ".join(f"{r['precision']} DP {r['dp']} zero {r['distributed_optimizer']}: "
                                                 f"{r['per_rank_total']}" for r in uneven))
    print(f"activations: saved-for-backward storages of one forward+backward of a [{MBS}, {SEQ}] micro-batch "
          f"(parameter storages excluded). Runtime {total_seconds:.0f}s "
          f"({', '.join(f'DP {d}: {s:.0f}s' for d, s in launches.items())}).")

    import torch

    record = {"config": {"yaml": os.path.relpath(CONFIG, ROOT), "seq_length": SEQ, "micro_batch_size": MBS,
                         "global_batch_size": GBS, "iters": args.iters, "num_threads": 1, "dp": args.dp,
                         "precisions": args.precisions, "train_argv": train_argv("fp32", False, args.iters)},
              "env": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                      "machine": platform.machine()},
              "runtime_seconds": total_seconds, "launch_seconds": launches, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {os.path.relpath(args.json, ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
