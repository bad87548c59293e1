#!/usr/bin/env python
"""Pipeline bubble: unit-cost simulation vs the formula, and measured traces of real CPU runs.

    python benchmarks/pipeline_bubble.py            # about 3-4 minutes on 2 CPU cores

1. Unit cost (no processes): replays the schedule orders of schedule_order.py with forward cost 1
   and backward cost 2 (a chunk op costs 1/v of that) for a grid of (p, m, v) and prints the
   simulated bubble next to (p-1)/(v*m+p-1) and the peak number of in-flight forwards per rank.
2. Measured: trains the tiny model for a few steps with PP=p processes (1F1B, then interleaved
   1F1B with one layer per chunk) and --pipeline-trace-dir, reads each rank's ops of the last step
   and computes the bubble 1 - busy_total / (p * (max end - min start)). Two busy times are given:
   the raw sum of op durations (an op's recorded time includes the blocking wait for its input
   activation/gradient, so this underestimates the bubble) and the sum with that wait removed
   (an op is counted from max(recorded start, end of the op producing its input)). The schedule is
   also replayed with each rank's median measured op times: the bubble the unequal stage costs
   alone give (the last stage also runs the output layer and the loss).
3. Draws per-rank timelines (unit cost and measured, for 1F1B and interleaved) to
   benchmarks/results/pipeline_timeline.png (copied to docs/img/) and writes
   benchmarks/results/pipeline_bubble.json. Prints Markdown tables for docs/parallelism.md.

Not a test: nothing is asserted about time. With more processes than cores the measured
bubbles are pessimistic (ranks take turns on the cores, which stretches ops and adds gaps).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_th.parallel.schedule_order import (bubble_formula, dependency, peak_inflight, replay,  # noqa: E402
                                                 simulate)


def unit_cost_grid(ps, ms, vs) -> list[dict]:
    rows = []
    for p in ps:
        for m in ms:
            for v in vs:
                if v > 1 and (m % p or m < p):
                    continue  # interleaving needs m to be a multiple of p
                sim = simulate(p, m, v, 1.0, 2.0)
                rows.append({"p": p, "m": m, "v": v, "makespan": sim["makespan"], "bubble_sim": sim["bubble"],
                             "bubble_formula": bubble_formula(p, m, v), "peak_inflight": sim["peak_inflight"]})
    return rows


# ----------------------------------------------------------------------------------------------
# measured runs

def run_pretrain(p: int, a, v_flags: list[str], workdir: str) -> dict:
    """Trains a.train_iters steps with PP=p processes; returns {"traces": [...]} or {"error": ...}."""
    save = os.path.join(workdir, "ckpt")
    trace_dir = os.path.join(workdir, "trace")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(p),
           os.path.join(ROOT, "pretrain_gpt.py"), "--config", os.path.join(ROOT, "examples", "tiny.yaml"),
           "--pipeline-model-parallel-size", str(p), "--num-layers", str(a.num_layers),
           "--train-iters", str(a.train_iters), "--global-batch-size", str(a.global_batch_size),
           "--micro-batch-size", str(a.micro_batch_size), "--seq-length", str(a.seq_length),
           "--log-interval", "1", "--save", save, "--eval-interval", "1000000", "--save-interval", "1000000",
           # The run ends with an evaluation (it == train_iters), a forward-only pass that replaces the
           # recorded trace; with no evaluation batches the trace is the last training step's.
           "--eval-iters", "0",
           "--num-threads", "1", "--pipeline-trace-dir", trace_dir, *v_flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-25:])
        return {"error": f"exit code {proc.returncode}\n{tail}", "command": " ".join(cmd), "wall_s": wall}
    traces = []
    for r in range(p):
        with open(os.path.join(trace_dir, f"rank{r}.json")) as f:
            traces.append(json.load(f))
    step_times = []
    metrics = os.path.join(save, "logs", "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            step_times = [json.loads(line)["step_time"] for line in f if '"step_time"' in line]
    return {"traces": traces, "command": " ".join(cmd), "wall_s": wall, "step_times": step_times}


def analyse(traces: list[dict], m: int) -> dict:
    """Measured bubble of one step from the per-rank traces (times made relative to the first op)."""
    traces = [t for t in traces if t["tp_rank"] == 0 and t["dp_rank"] == 0]
    traces.sort(key=lambda t: t["pp_rank"])
    p, v = traces[0]["pp"], traces[0]["chunks"]
    for t in traces:
        n_b = sum(o["op"] == "B" for o in t["ops"])
        if len(t["ops"]) != 2 * m * v or n_b != m * v:
            raise RuntimeError(f"rank {t['rank']}: trace has {len(t['ops'])} ops ({n_b} backward), expected "
                               f"{2 * m * v} ({m * v} backward): not a training step's trace")
    t_min = min(o["start"] for t in traces for o in t["ops"])
    t_max = max(o["end"] for t in traces for o in t["ops"])
    span = t_max - t_min
    nvs = p * v
    ends = {(o["op"], o["micro_batch"], o["chunk"] * p + t["pp_rank"]): o["end"] for t in traces for o in t["ops"]}
    ranks = []
    for t in traces:
        r = t["pp_rank"]
        ops = []
        for o in t["ops"]:
            dep = dependency(o["op"], o["micro_batch"], o["chunk"] * p + r, nvs)
            ready = max(o["start"], ends.get(dep, o["start"]))
            ready = min(ready, o["end"])
            ops.append({"op": o["op"], "micro_batch": o["micro_batch"], "chunk": o["chunk"],
                        "start": o["start"] - t_min, "end": o["end"] - t_min, "ready": ready - t_min})
        raw = sum(o["end"] - o["start"] for o in ops)
        compute = sum(o["end"] - o["ready"] for o in ops)
        f_d = [o["end"] - o["ready"] for o in ops if o["op"] == "F"]
        b_d = [o["end"] - o["ready"] for o in ops if o["op"] == "B"]
        ranks.append({"pp_rank": r, "busy_raw_s": raw, "busy_compute_s": compute,
                      "mean_forward_s": sum(f_d) / len(f_d), "mean_backward_s": sum(b_d) / len(b_d),
                      "peak_inflight": peak_inflight(ops), "ops": ops})
    # The same schedule replayed with each (rank, op, chunk)'s median measured compute time and free
    # transfers: the bubble that the stages' unequal costs alone would give (no waits for the CPU).
    med = {}
    for x in ranks:
        for key in {(o["op"], o["chunk"]) for o in x["ops"]}:
            d = sorted(o["end"] - o["ready"] for o in x["ops"] if (o["op"], o["chunk"]) == key)
            med[(x["pp_rank"], *key)] = d[len(d) // 2]
    rep = replay(p, m, v, cost=lambda r, kind, c: med[(r, kind, c)])
    rep_span = max(o["end"] for r in rep for o in r)
    rep_busy = sum(o["end"] - o["start"] for r in rep for o in r)
    busy_raw = sum(x["busy_raw_s"] for x in ranks)
    busy_compute = sum(x["busy_compute_s"] for x in ranks)
    return {"p": p, "m": m, "v": v, "span_s": span,
            "bubble_raw": 1 - busy_raw / (p * span), "bubble_compute": 1 - busy_compute / (p * span),
            "bubble_formula": bubble_formula(p, m, v), "bubble_sim": simulate(p, m, v, 1.0, 2.0)["bubble"],
            "bubble_sim_measured_costs": 1 - rep_busy / (p * rep_span), "sim_measured_costs_span_s": rep_span,
            "median_op_s": {f"rank{r} {k} chunk{c}": t for (r, k, c), t in sorted(med.items())},
            "ranks": ranks}


# ----------------------------------------------------------------------------------------------
# drawing

COLORS = {("F", 0): "#1f5fa8", ("F", 1): "#8db8e8", ("B", 0): "#c2471b", ("B", 1): "#f4a582"}
TEXT = {("F", 0): "white", ("F", 1): "black", ("B", 0): "white", ("B", 1): "black"}
FIG_W, LEFT, RIGHT, DPI, FONT = 15.0, 0.06, 0.99, 110, 7


def draw_panel(ax, rank_ops: list[list[dict]], title: str, xlabel: str, xmax: float, scale: float = 1.0):
    p = len(rank_ops)
    ax_px = FIG_W * (RIGHT - LEFT) * DPI
    for r, ops in enumerate(rank_ops):
        for o in ops:
            key = (o["op"], min(o["chunk"], 1))
            start, end = o.get("ready", o["start"]) * scale, o["end"] * scale
            if "ready" in o and o["ready"] > o["start"]:  # waiting for the input: thin grey bar
                ax.barh(r, (o["ready"] - o["start"]) * scale, left=o["start"] * scale, height=0.22,
                        color="#b0b0b0", edgecolor="none")
            ax.barh(r, end - start, left=start, height=0.78, color=COLORS[key], edgecolor="black", linewidth=0.4)
            label = str(o["micro_batch"])
            if (end - start) / xmax * ax_px > len(label) * FONT * 0.62 * DPI / 72 + 3:
                ax.text((start + end) / 2, r, label, ha="center", va="center", fontsize=FONT, color=TEXT[key])
    ax.set_xlim(0, xmax)
    ax.set_ylim(p - 0.5, -0.5)
    ax.set_yticks(range(p))
    ax.set_yticklabels([f"PP rank {r}" for r in range(p)], fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.25)


def draw(unit: dict, measured: dict, path: str, p: int, m: int, cores: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = []
    for v, u in sorted(unit.items()):
        name = "1F1B" if v == 1 else "interleaved 1F1B"
        panels.append(("unit", name, v, u))
        if measured.get(v) is not None and "error" not in measured[v]:
            panels.append(("measured", name, v, measured[v]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(FIG_W, 1.75 * len(panels) + 1.0), dpi=DPI)
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=1 - 0.45 / (1.75 * len(panels) + 1.0),
                        bottom=0.55 / (1.75 * len(panels) + 1.0), hspace=0.75)
    unit_xmax = max(u["makespan"] for u in unit.values())
    meas = [x for x in measured.values() if x is not None and "error" not in x]
    meas_xmax = max((x["span_s"] for x in meas), default=1.0) * 1000
    for ax, (kind, name, v, d) in zip(axes, panels):
        if kind == "unit":
            title = (f"{name}, p={p} m={m} v={v}, unit cost (chunk forward {1 / v:g}, backward {2 / v:g}): "
                     f"bubble {d['bubble']:.3f}, formula (p-1)/(vm+p-1) = {bubble_formula(p, m, v):.3f}")
            draw_panel(ax, d["ops"], title, "time (cost units; a whole-stage forward = 1)", unit_xmax)
        else:
            note = f"; {p} procs on {cores} cores: pessimistic" if p > cores else ""
            title = (f"{name}, p={p} m={m} v={v}, measured (last step of the median run): "
                     f"bubble {d['bubble_compute']:.3f} "
                     f"(input waits removed; raw op durations {d['bubble_raw']:.3f}){note}")
            draw_panel(ax, [x["ops"] for x in d["ranks"]], title, "time (ms from the step's first op)",
                       meas_xmax, scale=1000.0)
    handles = [Patch(color=COLORS[("F", 0)], label="forward, chunk 0"),
               Patch(color=COLORS[("F", 1)], label="forward, chunk 1"),
               Patch(color=COLORS[("B", 0)], label="backward, chunk 0"),
               Patch(color=COLORS[("B", 1)], label="backward, chunk 1"),
               Patch(color="#b0b0b0", label="waiting for input (measured)")]
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.text(0.995, 0.003, "numbers in boxes: micro-batch", ha="right", va="bottom", fontsize=7, color="#555555")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------

def fmt_peak(peaks) -> str:
    return "/".join(str(x) for x in peaks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid-p", type=int, nargs="+", default=[2, 4], help="PP sizes of the unit-cost table")
    ap.add_argument("--grid-m", type=int, nargs="+", default=[4, 8, 16], help="micro-batches per step")
    ap.add_argument("--grid-v", type=int, nargs="+", default=[1, 2], help="model chunks per rank")
    ap.add_argument("--pp", type=int, default=4, help="PP size (processes) of the measured runs and the pictures")
    ap.add_argument("--num-layers", type=int, default=8,
                    help="layers of the measured model (both runs); interleaving uses one layer per chunk, "
                         "so v = num_layers / pp")
    ap.add_argument("--global-batch-size", type=int, default=16)
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--train-iters", type=int, default=3, help="steps per run; the last one is traced")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per schedule (CPU contention makes one traced step noisy); the median is shown")
    ap.add_argument("--skip-measured", action="store_true", help="only the unit-cost part (no processes)")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--docs-png", default=os.path.join(ROOT, "docs", "img", "pipeline_timeline.png"),
                    help="where to copy the timeline PNG ('' to skip)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    p = a.pp
    m = a.global_batch_size // a.micro_batch_size
    v_il = a.num_layers // p
    cores = os.cpu_count() or 1
    oversubscribed = p > cores

    # 1. unit cost
    grid = unit_cost_grid(a.grid_p, a.grid_m, a.grid_v)
    print("Unit cost: forward 1, backward 2 per stage (a chunk op costs 1/v of that)\n")
    print(f"{'p':>3} {'m':>4} {'v':>3} {'bubble sim':>11} {'formula':>9} {'makespan':>9}  "
          f"peak in-flight fwd per rank (rank 0 in stage units)")
    for g in grid:
        print(f"{g['p']:>3} {g['m']:>4} {g['v']:>3} {g['bubble_sim']:>11.4f} {g['bubble_formula']:>9.4f} "
              f"{g['makespan']:>9.2f}  {fmt_peak(g['peak_inflight'])} ({g['peak_inflight'][0] / g['v']:g})")
    print("(peak in-flight counts chunk activations; with v chunks each is 1/v of a stage's activations,\n"
          " the number in parentheses is rank 0's peak in whole-stage activations)")

    unit = {}
    for v in (1, v_il):
        ops = replay(p, m, v)
        makespan = max(o["end"] for r in ops for o in r)
        sim = simulate(p, m, v, 1.0, 2.0)
        if abs(makespan - sim["makespan"]) > 1e-9 or [peak_inflight(r) for r in ops] != sim["peak_inflight"]:
            raise RuntimeError(f"replay disagrees with schedule_order.simulate for p={p} m={m} v={v}")
        unit[v] = {"makespan": makespan, "bubble": sim["bubble"], "ops": ops}

    # 2. measured
    measured: dict = {}
    if not a.skip_measured:
        print(f"\nMeasured: PP={p} processes x 1 thread on {cores} cores, tiny model with {a.num_layers} layers, "
              f"seq {a.seq_length}, micro-batch {a.micro_batch_size}, m={m} micro-batches, "
              f"{a.train_iters} steps (last one traced)")
        if oversubscribed:
            print(f"NOTE: {p} processes share {cores} CPU cores, so ranks take turns on the cores: ops are "
                  f"stretched and gaps appear that a machine with a core per rank would not have. The "
                  f"measured bubbles are pessimistic.")
        with tempfile.TemporaryDirectory() as tmp:
            for v, flags in ((1, []), (v_il, ["--num-layers-per-virtual-pipeline-stage", "1"])):
                if v == 1 and flags:
                    continue
                name = "1F1B" if v == 1 else f"interleaved (v={v})"
                runs = []
                for i in range(a.repeats):
                    res = run_pretrain(p, a, flags, os.path.join(tmp, f"v{v}_{i}"))
                    if "error" in res:
                        print(f"\n{name}: pretrain FAILED\n  command: {res['command']}\n{res['error']}")
                        runs = [{"error": res["error"], "command": res["command"]}]
                        break
                    try:
                        d = analyse(res["traces"], m)
                    except RuntimeError as e:
                        print(f"\n{name}: {e}")
                        runs = [{"error": str(e), "command": res["command"]}]
                        break
                    d.update(command=res["command"], wall_s=res["wall_s"], step_times_s=res["step_times"])
                    runs.append(d)
                if "error" in runs[0]:
                    measured[v] = runs[0]
                    continue
                # the run with the median bubble is shown (table, picture); all runs' bubbles are kept
                d = sorted(runs, key=lambda x: x["bubble_compute"])[(len(runs) - 1) // 2]
                d["repeats"] = [{k: x[k] for k in ("bubble_compute", "bubble_raw", "bubble_sim_measured_costs",
                                                   "span_s", "step_times_s")} for x in runs]
                measured[v] = d
                print(f"\n{name}, median of {len(runs)} runs: step span {d['span_s'] * 1000:.0f} ms "
                      f"(step times {', '.join(f'{s:.2f}' for s in d['step_times_s'])} s)")
                print(f"  {'rank':>4} {'busy raw ms':>12} {'busy compute ms':>16} {'mean F ms':>10} "
                      f"{'mean B ms':>10} {'peak in-flight':>15}")
                for x in d["ranks"]:
                    print(f"  {x['pp_rank']:>4} {x['busy_raw_s'] * 1000:>12.0f} {x['busy_compute_s'] * 1000:>16.0f} "
                          f"{x['mean_forward_s'] * 1000:>10.1f} {x['mean_backward_s'] * 1000:>10.1f} "
                          f"{x['peak_inflight']:>15}")
                print(f"  bubble: measured {d['bubble_compute']:.3f} (input waits removed), "
                      f"{d['bubble_raw']:.3f} (raw op durations, counts waits as busy); "
                      f"formula {d['bubble_formula']:.3f}; unit-cost sim {d['bubble_sim']:.3f}; "
                      f"sim with the measured median op times {d['bubble_sim_measured_costs']:.3f} "
                      f"(span {d['sim_measured_costs_span_s'] * 1000:.0f} ms)")
                each = ", ".join(f"{x:.3f}" for x in sorted(r["bubble_compute"] for r in runs))
                print(f"  all runs, measured bubble: {each}")

    # 3. picture + JSON
    os.makedirs(a.out_dir, exist_ok=True)
    png = os.path.join(a.out_dir, "pipeline_timeline.png")
    draw(unit, measured, png, p, m, cores)
    print(f"\nwrote {png}")
    if a.docs_png:
        os.makedirs(os.path.dirname(os.path.abspath(a.docs_png)), exist_ok=True)
        shutil.copyfile(png, a.docs_png)
        print(f"copied to {a.docs_png}")
    out = {"unit_cost": {"f_cost": 1.0, "b_cost": 2.0, "grid": grid,
                         "timelines": {str(v): u for v, u in unit.items()}},
           "measured": {"pp": p, "cores": cores, "oversubscribed": oversubscribed, "num_layers": a.num_layers,
                        "seq_length": a.seq_length, "micro_batch_size": a.micro_batch_size,
                        "global_batch_size": a.global_batch_size, "m": m, "train_iters": a.train_iters,
                        "repeats": a.repeats,
                        "runs": {str(v): d for v, d in measured.items()}}}
    js = os.path.join(a.out_dir, "pipeline_bubble.json")
    with open(js, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {js}")

    # 4. Markdown
    print("\n| p | m | v | bubble (unit-cost sim, F=1 B=2) | (p-1)/(v·m+p-1) | peak in-flight chunk forwards "
          "per rank | rank 0 peak, stage activations |")
    print("|---|---|---|---|---|---|---|")
    for g in grid:
        print(f"| {g['p']} | {g['m']} | {g['v']} | {g['bubble_sim']:.3f} | {g['bubble_formula']:.3f} | "
              f"{fmt_peak(g['peak_inflight'])} | {g['peak_inflight'][0] / g['v']:g} |")
    if measured:
        note = f" ({p} processes on {cores} cores: pessimistic)" if oversubscribed else ""
        print(f"\n| schedule (p={p}, m={m}) | v | formula | unit-cost sim | sim, measured op times | "
              f"measured{note}, median | all runs | measured, raw op durations | step span |")
        print("|---|---|---|---|---|---|---|---|---|")
        for v, d in measured.items():
            name = "1F1B" if v == 1 else "interleaved 1F1B"
            if "error" in d:
                print(f"| {name} | {v} | {bubble_formula(p, m, v):.3f} | {unit[v]['bubble']:.3f} | | failed | | | |")
                continue
            print(f"| {name} | {v} | {d['bubble_formula']:.3f} | {d['bubble_sim']:.3f} | "
                  f"{d['bubble_sim_measured_costs']:.3f} | {d['bubble_compute']:.3f} | "
                  f"{', '.join(f'{x:.3f}' for x in sorted(r['bubble_compute'] for r in d['repeats']))} | "
                  f"{d['bubble_raw']:.3f} | {d['span_s'] * 1000:.0f} ms |")
    if measured:
        print("\nmeasured: busy = op time from max(recorded start, end of the op producing its input); raw op "
              "durations include the blocking wait for that input, so they count the bubble as busy. "
              "sim, measured op times: the schedule replayed with each rank's median measured op times and "
              "free transfers (the stages' unequal costs, without CPU contention).")
    print(f"\ntotal runtime {time.perf_counter() - t_start:.0f} s")
    return 1 if any("error" in d for d in measured.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
