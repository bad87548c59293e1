#!/usr/bin/env python
"""Training throughput against megatron-core 0.19.2 on CPU: config B at (1,1,1) and (2,2,2).

    python benchmarks/vs_megatron_core.py                 # both rows, 5 alternating rounds each
    python benchmarks/vs_megatron_core.py --layouts 2,2,2 --trace --skip-parity --json /tmp/r222.json
    python benchmarks/vs_megatron_core.py --merge /tmp/r111.json /tmp/r222.json   # rows of separate runs

Config B (issue 19): 8 layers, hidden 256, 8 heads (MHA), GeLU MLP 1024, seq 512, vocab 8192, fp32,
micro-batch 1, global batch 8; LayerNorm, biases, learned absolute positions and tied embeddings
(both sides' defaults, so nothing is adapted; RoPE would be equally possible), no dropout.

- megatron_th: its real entry, ``python -m torch.distributed.run pretrain_gpt.py <flags>`` on the
  embedded corpus, tokens/s read from its metrics.jsonl (one line per iteration).
- megatron-core: the same launcher running this file with ``--worker mcore``: GPTModel with
  ``get_gpt_layer_local_spec()`` (its own attention with a dense causal mask [1, 1, s, s], as
  Megatron-LM's pretrain_gpt passes it), its ``get_forward_backward_func()`` schedule (1F1B under
  PP), its DistributedDataParallel and ``get_megatron_optimizer`` (DistributedOptimizer with
  ``--use-distributed-optimizer``), ``finalize_model_grads``, Adam with clipping at 1.0; random
  token batches (timing does not depend on the token values: no document masking on either side).
  benchmarks/_mcore_cpu_shims.py makes it run on CPU with gloo (a triton stub, CUDA calls on CPU);
  benchmarks/_mcore_worker.py holds this side's code.

Threads: (1,1,1) is 1 process x 2 threads, (2,2,2) 8 processes x 1 thread (TP2 PP2 DP2), the same
for both sides. A run trains ``--iters`` steps; its throughput is the median tokens/s from
iteration 3 on. A round runs both sides back to back, alternating which goes first; the ratio
(ours / megatron-core) of a row is the median of the rounds' ratios. ``uptime`` is recorded around
every run: the machine is shared, and only same-moment ratios mean much.

Before timing, ``--worker parity`` (one process) builds our model from the same configuration,
copies its initial weights into megatron-core's GPTModel and compares the loss and every gradient
on one micro-batch; the timed runs' first losses are printed next to ln(8192).

Breakdown of a (2,2,2) step (``--trace``): our runs write --pipeline-trace-dir, whose ops carry
their wall and CPU seconds and those spent blocked in collectives and p2p (comm.COUNTER);
megatron-core's torch.distributed calls are timed the same way (_mcore_worker.py). Printed per
side as CPU-seconds of all ranks (compute, communication, outside the pipeline, idle = cores x
step wall minus the CPU used) and, for ours, wall time per pipeline stage (``breakdown``).

Prints Markdown tables and writes benchmarks/results/vs_megatron_core.json. Not a test: nothing
is asserted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

B = dict(num_layers=8, hidden_size=256, num_attention_heads=8, ffn_hidden_size=1024, seq_length=512,
         vocab_size=8192, micro_batch_size=1, global_batch_size=8)
LR, WEIGHT_DECAY, CLIP, SEED = 1e-4, 0.01, 1.0, 1234


def parse_layout(s: str) -> tuple[int, int, int]:
    tp, pp, dp = (int(x) for x in s.split(","))
    return tp, pp, dp


def threads_for(layout) -> int:
    """(1,1,1): one process with both cores' threads; otherwise one thread per process."""
    return 2 if layout == (1, 1, 1) else 1


def uptime() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def launcher(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]


def median_from_3(values: list[float]) -> float:
    """Median from iteration 3 on (finite values only)."""
    rest = [v for v in values[2:] if math.isfinite(v)]
    return statistics.median(rest) if rest else float("nan")


# ---- megatron_th ---------------------------------------------------------------------------------
def our_command(layout, a, workdir: str, root: str = ROOT) -> list[str]:
    tp, pp, dp = layout
    cmd = launcher(tp * pp * dp) + [
        os.path.join(root, "pretrain_gpt.py"),
        "--num-layers", str(B["num_layers"]), "--hidden-size", str(B["hidden_size"]),
        "--num-attention-heads", str(B["num_attention_heads"]), "--ffn-hidden-size", str(B["ffn_hidden_size"]),
        "--seq-length", str(B["seq_length"]), "--vocab-size", str(B["vocab_size"]),
        "--micro-batch-size", str(B["micro_batch_size"]), "--global-batch-size", str(B["global_batch_size"]),
        "--hidden-dropout", "0", "--attention-dropout", "0", "--lr", str(LR), "--lr-decay-style", "constant",
        "--weight-decay", str(WEIGHT_DECAY), "--clip-grad", str(CLIP), "--seed", str(SEED),
        "--train-iters", str(a.iters), "--log-interval", "1", "--eval-iters", "0", "--split", "100,0,0",
        "--log-dir", os.path.join(workdir, "logs"), "--num-threads", str(threads_for(layout)),
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    if dp > 1 and not a.no_distributed_optimizer:
        cmd.append("--use-distributed-optimizer")
    if a.overlap_grad_reduce:
        cmd.append("--overlap-grad-reduce")
    if a.sequence_parallel and tp > 1:
        cmd.append("--sequence-parallel")
    if a.trace and pp > 1:
        cmd += ["--pipeline-trace-dir", os.path.join(workdir, "trace")]
    return cmd


def run_ours(layout, a, workdir: str, root: str = ROOT) -> dict:
    """megatron_th's pretrain_gpt.py from ``root`` (this tree, or --baseline-root)."""
    os.makedirs(workdir, exist_ok=True)
    cmd = our_command(layout, a, workdir, root)
    res = _run(cmd, layout, os.path.join(workdir, "logs", "metrics.jsonl"))
    if "error" in res:
        return res
    with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if '"tokens_per_sec"' in line]
    res.update(tokens_per_sec=[r["tokens_per_sec"] for r in recs], losses=[r["lm_loss"] for r in recs],
               grad_norms=[r["grad_norm"] for r in recs],
               breakdown=breakdown(os.path.join(workdir, "trace"), recs[-1]["step_time"],
                                   res["cpu_at"][-1] - res["cpu_at"][-2] if len(res["cpu_at"]) >= 2 else None))
    return res


def breakdown(trace_dir: str, step_time: float, step_cpu: float | None = None) -> dict | None:
    """Where one traced step of ours went (the last step; PP > 1 only, else None).

    ``stages``: per pipeline stage (mean over its TP x DP ranks), wall seconds: compute (op time
    minus its blocking collectives), TP communication (blocking collectives inside the ops,
    waiting for the TP peer included), p2p + bubble (the exchanges between steps: transfers and
    waiting for the neighbouring stage), other (Python between ops), and outside the pipeline
    (``step_time`` minus the pipeline's span: batch, DP reduce-scatter of the gradients,
    tied-embedding all-reduce, optimizer with its norm and the Zero-1 parameter all-gather, loss
    all-reduces).

    ``cpu``: the same step in CPU seconds summed over all ranks (process_time, every thread of a
    rank): compute, TP communication (the backend's CPU while a rank waits in a TP collective),
    p2p (while it waits in an exchange), outside the pipeline (``step_cpu``, all workers' CPU
    during the step as polled by _run, minus the pipeline's), and idle: cores x step wall minus
    ``step_cpu``, the CPU this run left to others (the bubble, where every rank waits, or the other
    load of the machine took it). On a machine with fewer cores than ranks wall time inside an
    op also counts the time the rank waited for a core, so the CPU split is the one that adds up."""
    if not os.path.isdir(trace_dir):
        return None
    stages: dict = {}
    cpu = dict(compute=0.0, tp_comm=0.0, p2p=0.0)
    for name in sorted(os.listdir(trace_dir)):
        with open(os.path.join(trace_dir, name)) as f:
            t = json.load(f)
        ops = t["ops"]
        if not ops or "comm" not in ops[0]:
            return None
        after = ops[-1].get("exchange_after")
        first = ops[0]["exchange"][0]
        last = after[1] if after else ops[-1]["end"]
        span = last - first
        comp = sum(o["end"] - o["start"] - o["comm"] for o in ops)
        tp = sum(o["comm"] for o in ops)
        p2p = sum(o["exchange"][1] - o["exchange"][0] for o in ops if o.get("exchange")) + (
            after[1] - after[0] if after else 0.0)
        rec = {"compute": comp, "tp_comm": tp, "p2p_and_bubble": p2p, "other": span - comp - tp - p2p,
               "outside_pipeline": step_time - span, "step": step_time}
        stages.setdefault(t["pp_rank"], []).append(rec)
        if "cpu" in ops[0]:
            cpu["compute"] += sum(o["cpu"] - o["comm_cpu"] for o in ops)
            cpu["tp_comm"] += sum(o["comm_cpu"] for o in ops)
            cpu["p2p"] += sum(o.get("exchange_cpu") or 0.0 for o in ops) + ops[-1].get("exchange_after_cpu", 0.0)
    out = {"stages": {str(r): {k: statistics.mean(x[k] for x in recs) for k in recs[0]}
                      for r, recs in sorted(stages.items())}, "cpu": None}
    if step_cpu is not None and "cpu" in ops[0]:
        cores = os.cpu_count() or 1
        cpu["outside_pipeline"] = step_cpu - sum(cpu.values())
        cpu["idle"] = cores * step_time - step_cpu
        cpu.update(step_cpu=step_cpu, capacity=cores * step_time)
        out["cpu"] = cpu
    return out


# ---- megatron-core -------------------------------------------------------------------------------
def mcore_command(layout, a, out: str) -> list[str]:
    tp, pp, dp = layout
    cmd = launcher(tp * pp * dp) + [os.path.abspath(__file__), "--worker", "mcore", "--out", out,
                                    "--layouts", ",".join(map(str, layout)), "--iters", str(a.iters)]
    if a.no_distributed_optimizer:
        cmd.append("--no-distributed-optimizer")
    if a.overlap_grad_reduce:
        cmd.append("--overlap-grad-reduce")
    if a.sequence_parallel:
        cmd.append("--sequence-parallel")
    return cmd


def run_mcore(layout, a, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "mcore.jsonl")
    res = _run(mcore_command(layout, a, out), layout, out)
    if "error" in res:
        return res
    with open(out) as f:
        recs = [json.loads(line) for line in f]
    res.update(tokens_per_sec=[r["tokens_per_sec"] for r in recs], losses=[r["lm_loss"] for r in recs],
               grad_norms=[r["grad_norm"] for r in recs], num_parameters=recs[0]["num_parameters"])
    if len(res["cpu_at"]) >= 2 and layout != (1, 1, 1):
        res["breakdown"] = mcore_breakdown(recs[-1], res["cpu_at"][-1] - res["cpu_at"][-2])
    return res


def mcore_breakdown(rec: dict, step_cpu: float) -> dict:
    """megatron-core's last step in CPU-seconds summed over its ranks: blocked in torch.distributed
    (every collective and p2p wait, time_torch_distributed), the rest (compute, optimizer, Python),
    idle (cores x step wall minus the step's CPU); and the mean wall seconds a rank was blocked."""
    cores = os.cpu_count() or 1
    return {"comm_cpu": rec["comm_cpu"], "rest_cpu": step_cpu - rec["comm_cpu"], "step_cpu": step_cpu,
            "idle": cores * rec["step_time"] - step_cpu, "capacity": cores * rec["step_time"],
            "comm_wall_per_rank": rec["comm_wall"], "step": rec["step_time"]}


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on
    except (OSError, IndexError):
        return None


def _children(parent: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None and int(st[1]) == parent:
            out.append(int(d))
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(st[11]) + int(st[12])) / tick for p in pids if (st := _stat(p)) is not None)


OMP_WAIT_POLICY = "PASSIVE"
"""Both sides' OpenMP wait policy (set by main from --omp-wait-policy; None: the runtime's default)."""


def _run(cmd: list[str], layout, lines_file: str) -> dict:
    """Runs ``cmd`` (torch.distributed.run) and, each time its per-iteration file ``lines_file``
    gets a line, reads the CPU time its worker processes have used so far (polled every 50 ms):
    ``cpu_at[k]`` after iteration k+1, for tokens per CPU-second beside tokens per second."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_for(layout)), PYTHONWARNINGS="ignore")
    if OMP_WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    nproc = layout[0] * layout[1] * layout[2]
    load0, t0 = uptime(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        workers, cpu_at = [], []
        while proc.poll() is None:
            time.sleep(0.05)
            if len(workers) < nproc:
                workers = _children(proc.pid)
            if os.path.exists(lines_file):
                with open(lines_file) as f:
                    n = sum(1 for _ in f)
                if n > len(cpu_at):
                    cpu_at += [_cpu_seconds(workers)] * (n - len(cpu_at))
        wall, load1 = time.perf_counter() - t0, uptime()
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        lines = text.strip().splitlines()
        ranks = [ln for ln in lines if ln.startswith("[rank")]  # a failing rank's traceback, not the launcher's
        tail = "\n".join((ranks or lines)[-30:])
        return {"error": f"exit code {proc.returncode}\n{tail}", "command": " ".join(cmd)}
    return {"wall_s": wall, "load": [load0, load1], "command": " ".join(cmd), "cpu_at": cpu_at}


def per_cpu_second(res: dict) -> list[float]:
    """Tokens per CPU-second of iteration k (k >= 2; nan for the first, which includes start-up)."""
    tokens = B["global_batch_size"] * B["seq_length"]
    c = res["cpu_at"]
    return [float("nan")] + [tokens / (c[k] - c[k - 1]) if c[k] > c[k - 1] else float("nan") for k in range(1, len(c))]


# ---- parity: our initial weights in megatron-core, one micro-batch ---------------------------------
def parity(a, tmp: str) -> dict:
    out = os.path.join(tmp, "parity.json")
    res = _run(launcher(1) + [os.path.abspath(__file__), "--worker", "parity", "--out", out], (1, 1, 1), out)
    if "error" in res:
        return res
    with open(out) as f:
        return json.load(f)


# ---- the scheduler's share of a process with idle gloo groups -------------------------------------
def share_worker(a) -> int:
    """``a.groups`` idle gloo process groups (world 1), then 2-thread 512x512 matmuls for
    ``a.seconds``; prints one JSON line."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    groups = [dist.new_group([0], backend="gloo") for _ in range(a.groups)]  # noqa: F841 (kept alive)
    torch.set_num_threads(2)
    x = torch.randn(512, 512)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < a.seconds:
        x @ x
        n += 1
    wall = time.perf_counter() - t0
    print(json.dumps({"groups": a.groups, "matmuls_per_s": n / wall, "cpu_share": (time.process_time() - c0) / wall}))
    dist.destroy_process_group()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scheduler_check(seconds: float, groups: int) -> list[dict]:
    """Two identical compute processes, each in its own session (as torch.distributed.run starts its
    workers, so each is its own autogroup), one holding ``groups`` idle gloo groups, side by side."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "share", "--groups", str(n),
                               "--seconds", str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True,
                              env=dict(os.environ, OMP_NUM_THREADS="2", **({"OMP_WAIT_POLICY": OMP_WAIT_POLICY}
                                                                          if OMP_WAIT_POLICY else {})))
             for n in (0, groups)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def report(rows: list, baseline_root: str | None = None) -> None:
    """Prints the Markdown tables of ``rows`` (and stores each row's median-step breakdowns in it)."""
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in sorted(xs))  # noqa: E731
    print("\n| layout | processes x threads | megatron_th tokens/s | megatron-core 0.19.2 tokens/s | ratio | all rounds "
          "| tokens per CPU-second, ours / mcore | ratio | all rounds | load average |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| ({','.join(map(str, row['layout']))}) | {row['processes']} x {row['threads']} | "
              f"{row['ours_tps']:.0f} | {row['mcore_tps']:.0f} | **{row['ratio']:.2f}x** | {fmt(row['ratios'])} | "
              f"{row['ours_tpcs']:.0f} / {row['mcore_tpcs']:.0f} | **{row['cpu_ratio']:.2f}x** | "
              f"{fmt(row['cpu_ratios'])} | {row['load'][0]:.1f}-{row['load'][1]:.1f} |")
    print("(ratio columns: median over rounds of the per-round ratio; each side's figure: median over rounds of the "
          "median from iteration 3)")
    if baseline_root:
        print(f"\nbaseline tree {baseline_root}:\n| layout | baseline tokens/s | vs megatron-core | per CPU-second "
              f"| vs megatron-core | ours / baseline, tokens/s (all rounds) | per CPU-second (all rounds) |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| ({','.join(map(str, row['layout']))}) | {row['base_tps']:.0f} | {row['base_ratio']:.2f}x | "
                  f"{row['base_tpcs']:.0f} | {row['base_cpu_ratio']:.2f}x | {row['ours_vs_base']:.2f}x "
                  f"({fmt(x['ours_vs_base'] for x in row['rounds'])}) | {row['ours_vs_base_cpu']:.2f}x "
                  f"({fmt(x['ours_vs_base_cpu'] for x in row['rounds'])}) |")
    keys = ("compute", "tp_comm", "p2p_and_bubble", "other", "outside_pipeline", "step")
    for row in rows:
        sides = [k for k in ("ours", "base", "mcore") if f"{k}_tpcs" in row]
        row["cpu_seconds_per_step"] = {k: statistics.median(B["global_batch_size"] * B["seq_length"] / x[f"{k}_tpcs"]
                                                            for x in row["rounds"]) for k in sides}
        print(f"\n({','.join(map(str, row['layout']))}) CPU-seconds per step, all processes: "
              + ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_seconds_per_step"].items()))
        for side in ("ours", "base"):
            bds = [x[side]["breakdown"] for x in row["rounds"] if side in x and x[side].get("breakdown")]
            if not bds:
                continue
            bd = sorted(bds, key=lambda b: b["stages"]["0"]["step"])[(len(bds) - 1) // 2]  # the median step's run
            row[f"{side}_breakdown"] = bd
            print(f"{'megatron_th' if side == 'ours' else 'baseline tree'}, the traced (last) step of the run with the "
                  f"median step time of {len(bds)}; wall ms per rank (mean over a stage's ranks) and share of the step:")
            print("| PP stage | compute | TP communication | p2p + bubble | other in the pipeline | after the pipeline "
                  "(DP reduce, optimizer, param gather) | step |")
            print("|---|---|---|---|---|---|---|")
            for st, b in bd["stages"].items():
                cells = " | ".join(f"{1e3 * b[k]:.0f} ({100 * b[k] / b['step']:.0f}%)" for k in keys[:-1])
                print(f"| {st} | {cells} | {1e3 * b['step']:.0f} |")
            c = bd["cpu"]
            if c:
                print(f"the same step in CPU-seconds, all {row['processes']} ranks ({os.cpu_count()} cores x "
                      f"{bd['stages']['0']['step']:.2f} s = {c['capacity']:.2f} CPU-s of capacity):")
                print("| compute | TP communication | p2p | outside the pipeline | step (all workers) | idle "
                      "(bubble, or taken by other load) |")
                print("|---|---|---|---|---|---|")
                print("| " + " | ".join(f"{c[k]:.2f} ({100 * c[k] / c['capacity']:.0f}%)"
                                        for k in ("compute", "tp_comm", "p2p", "outside_pipeline", "step_cpu", "idle"))
                      + " |")
        bds = [x["mcore"]["breakdown"] for x in row["rounds"] if x["mcore"].get("breakdown")]
        if bds:
            c = sorted(bds, key=lambda b: b["step"])[(len(bds) - 1) // 2]
            row["mcore_breakdown"] = c
            print(f"megatron-core, the last step of the run with the median step time of {len(bds)}, CPU-seconds of all "
                  f"{row['processes']} ranks ({os.cpu_count()} cores x {c['step']:.2f} s = {c['capacity']:.2f} CPU-s); "
                  f"a rank was blocked in torch.distributed {1e3 * c['comm_wall_per_rank']:.0f} ms of the step (mean):")
            print("| compute and the rest (optimizer, Python) | communication (all collectives and p2p) | step (all workers) "
                  "| idle (bubble, or taken by other load) |")
            print("|---|---|---|---|")
            print("| " + " | ".join(f"{c[k]:.2f} ({100 * c[k] / c['capacity']:.0f}%)"
                                    for k in ("rest_cpu", "comm_cpu", "step_cpu", "idle")) + " |")


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def merge(paths: list, out: str) -> int:
    """--merge: the rows of several result files, printed and written together (each keeps its flags)."""
    docs = []
    for p in paths:
        try:
            with open(p) as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"error: --merge {p}: {e}", file=sys.stderr)
            return 2
    rows = [dict(r, flags=d["flags"]) for d in docs for r in d["rows"]]
    report(rows, None)
    write_json(out, {"config_b": B, "parity": next((d["parity"] for d in docs if d.get("parity")), None),
                     "scheduler_check": next((d["scheduler_check"] for d in docs if d.get("scheduler_check")), None),
                     "merged_from": [os.path.basename(p) for p in paths], "rows": rows})
    print(f"wrote {out}")
    return 0


# ---- driver --------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", nargs="+", default=["1,1,1", "2,2,2"], help="TP,PP,DP rows")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per row (ratio = their median)")
    ap.add_argument("--iters", type=int, default=7, help="steps per run; tokens/s = median from iteration 3")
    ap.add_argument("--no-distributed-optimizer", action="store_true",
                    help="plain DP instead of --use-distributed-optimizer (both sides)")
    ap.add_argument("--overlap-grad-reduce", action="store_true", help="both sides")
    ap.add_argument("--sequence-parallel", action="store_true", help="both sides, when TP > 1")
    ap.add_argument("--trace", action="store_true", help="our PP runs also write --pipeline-trace-dir (kept in --keep)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of both sides (default PASSIVE; '' for the OpenMP runtime's default, which "
                         "spins: on a shared, loaded machine a 2-thread process then burns most of its CPU time "
                         "spinning at barriers, 5x the work in one measurement here)")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--baseline-root", default=None, metavar="DIR",
                    help="also run megatron_th's pretrain_gpt.py from this tree (e.g. an export of an earlier "
                         "commit with its built extension) in every round: a third, alternating side")
    ap.add_argument("--scheduler-check", type=float, default=40.0, metavar="SECONDS",
                    help="first run two identical compute processes side by side, one holding 24 idle gloo groups "
                         "(as megatron-core's 1-process run does), and print their CPU shares (0: skip)")
    ap.add_argument("--keep", default=None, help="keep the runs' directories here")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="run nothing: print the tables of these result files' rows (e.g. the rows measured in separate "
                         "invocations) and write them together to --json")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "vs_megatron_core.json"))
    ap.add_argument("--worker", choices=["mcore", "parity", "share"], help=argparse.SUPPRESS)
    ap.add_argument("--groups", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=40.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker in ("mcore", "parity"):
        import _mcore_worker  # (this directory is sys.path[0])

        return _mcore_worker.mcore_worker(a) if a.worker == "mcore" else _mcore_worker.parity_worker(a)
    if a.worker == "share":
        return share_worker(a)
    if a.merge:
        return merge(a.merge, a.json)
    if a.rounds < 1 or a.iters < 3:
        print("error: --rounds must be >= 1 and --iters >= 3 (throughput is the median from iteration 3)",
              file=sys.stderr)
        return 2
    global OMP_WAIT_POLICY
    OMP_WAIT_POLICY = a.omp_wait_policy or None
    layouts = [parse_layout(x) for x in a.layouts]
    t_start = time.perf_counter()
    tmp_ctx = tempfile.TemporaryDirectory() if a.keep is None else None
    tmp = a.keep or tmp_ctx.name
    os.makedirs(tmp, exist_ok=True)
    print(f"config B: {B}; fp32; {a.iters} steps per run, tokens/s = median from iteration 3; "
          f"{a.rounds} alternating rounds per row; OMP_WAIT_POLICY {OMP_WAIT_POLICY or '(default)'}; load average "
          f"now {uptime():.1f}", flush=True)
    check = None
    if not a.skip_parity:
        check = parity(a, tmp)
        if "error" in check:
            print(f"parity check FAILED:\n{check['error']}")
        else:
            print(f"parity (1 process, our initial weights copied into megatron-core, one micro-batch): parameters "
                  f"{check['num_parameters_ours']:,} vs {check['num_parameters_mcore']:,}; loss "
                  f"{check['loss_ours']:.6f} vs {check['loss_mcore']:.6f} (|diff| {check['loss_abs_diff']:.1e}, "
                  f"ln 8192 = {check['ln_vocab']:.4f}); gradients max relative diff "
                  f"{check['grad_max_rel_diff']:.1e}", flush=True)
    shares = None
    if a.scheduler_check > 0:
        shares = scheduler_check(a.scheduler_check, 24)
        print("scheduler check (two identical 2-thread matmul loops side by side, each its own session): "
              + "; ".join(f"{x['groups']} idle gloo groups: {x['cpu_share']:.2f} CPUs, {x['matmuls_per_s']:.0f} matmuls/s"
                          for x in shares) + f" (load {uptime():.1f})", flush=True)
    rows = []
    for layout in layouts:
        name = "({},{},{})".format(*layout)
        nproc = layout[0] * layout[1] * layout[2]
        print(f"\n{name}: {nproc} process(es) x {threads_for(layout)} thread(s)", flush=True)
        rounds = []
        sides = ["ours", "mcore"] + (["base"] if a.baseline_root else [])
        for r in range(a.rounds):
            order = tuple(sides[(r + i) % len(sides)] for i in range(len(sides)))  # each side first in turn
            got = {}
            for side in order:
                wd = os.path.join(tmp, f"{name}_{r}_{side}")
                got[side] = (run_mcore(layout, a, wd) if side == "mcore" else
                             run_ours(layout, a, wd, a.baseline_root if side == "base" else ROOT))
                if "error" in got[side]:
                    print(f"  round {r + 1} {side}: FAILED\n  {got[side]['command']}\n{got[side]['error']}")
                    return 1
            tps = {k: median_from_3(got[k]["tokens_per_sec"]) for k in sides}
            tpcs = {k: median_from_3(per_cpu_second(got[k])) for k in sides}
            loads = [x for k in sides for x in got[k]["load"]]
            rec = {"order": order, **{k: got[k] for k in sides}, "load": [min(loads), max(loads)]}
            for k in sides:
                rec[f"{k}_tps"], rec[f"{k}_tpcs"] = tps[k], tpcs[k]
            rec["ratio"], rec["cpu_ratio"] = tps["ours"] / tps["mcore"], tpcs["ours"] / tpcs["mcore"]
            line = (f"  round {r + 1} ({order[0]} first): tokens/s ours {tps['ours']:6.1f}, megatron-core "
                    f"{tps['mcore']:6.1f}: {rec['ratio']:.2f}x | tokens per CPU-second {tpcs['ours']:6.1f} / "
                    f"{tpcs['mcore']:6.1f}: {rec['cpu_ratio']:.2f}x")
            if "base" in sides:
                rec["base_ratio"], rec["base_cpu_ratio"] = tps["base"] / tps["mcore"], tpcs["base"] / tpcs["mcore"]
                rec["ours_vs_base"], rec["ours_vs_base_cpu"] = tps["ours"] / tps["base"], tpcs["ours"] / tpcs["base"]
                line += (f" | baseline tree {tps['base']:6.1f} tok/s ({rec['base_ratio']:.2f}x), "
                         f"{tpcs['base']:6.1f} per CPU-s ({rec['base_cpu_ratio']:.2f}x); ours/baseline "
                         f"{rec['ours_vs_base']:.2f}x, per CPU-s {rec['ours_vs_base_cpu']:.2f}x")
            line += (f" | step-1 loss {got['ours']['losses'][0]:.4f} / {got['mcore']['losses'][0]:.4f} | load "
                     f"{min(loads):.1f}-{max(loads):.1f}")
            rounds.append(rec)
            print(line, flush=True)
        med = lambda key: statistics.median(x[key] for x in rounds)  # noqa: E731
        rows.append({"layout": list(layout), "processes": nproc, "threads": threads_for(layout),
                     **{k: med(k) for k in ("ours_tps", "mcore_tps", "ratio", "ours_tpcs", "mcore_tpcs", "cpu_ratio",
                                            "base_tps", "base_tpcs", "base_ratio", "base_cpu_ratio", "ours_vs_base",
                                            "ours_vs_base_cpu") if k in rounds[0]},
                     "ratios": [x["ratio"] for x in rounds], "cpu_ratios": [x["cpu_ratio"] for x in rounds],
                     "load": [min(x["load"][0] for x in rounds), max(x["load"][1] for x in rounds)],
                     "mcore_num_parameters_last_rank": rounds[0]["mcore"]["num_parameters"], "rounds": rounds})
    report(rows, a.baseline_root)
    write_json(a.json, {"config_b": B, "flags": {k: getattr(a, k) for k in ("iters", "rounds", "no_distributed_optimizer",
                                                                          "overlap_grad_reduce", "sequence_parallel",
                                                                          "omp_wait_policy", "baseline_root")},
                        "parity": check, "scheduler_check": shares, "rows": rows})
    print(f"wrote {a.json}; total {time.perf_counter() - t_start:.0f} s")
    if tmp_ctx is not None:
        tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
