#!/usr/bin/env python
"""Tensor parallelism on CPU: TP=2 on 2 processes x 1 thread vs TP=1 on 1 process x 2 threads,
with and without sequence parallelism. Reports tokens/s (ratio to TP=1) and the bytes one step
communicates, measured by the byte counter vs the analytic formula. Prints a table, writes JSON.
Not a test: nothing is asserted."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_th.parallel.volume import tp_step_bytes  # noqa: E402


def run(nproc, threads, flags, save, iters):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           os.path.join(ROOT, "pretrain_gpt.py"), "--config", os.path.join(ROOT, "examples", "tiny.yaml"),
           "--train-iters", str(iters), "--log-interval", "1", "--save", save, "--save-interval", "1000000",
           "--eval-interval", "1000000", "--num-threads", str(threads), *flags]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(save, "logs", "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if "split" not in line]
    steady = recs[2:]  # the first steps warm up allocators and caches
    return {"tokens_per_sec": sum(r["tokens_per_sec"] for r in steady) / len(steady),
            "comm_bytes_per_step": steady[-1]["comm_bytes_per_step"], "loss_last": recs[-1]["lm_loss"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--json", default="benchmarks/results/tensor_parallel.json")
    a = p.parse_args()
    import yaml

    cfg = yaml.safe_load(open(os.path.join(ROOT, "examples", "tiny.yaml")))["model"]
    L, h = cfg["num_layers"], cfg["hidden_size"]
    b, s = a.micro_batch_size, a.seq_length
    common = ["--seq-length", str(s), "--micro-batch-size", str(b), "--global-batch-size", str(b)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, nproc, threads, flags in (("TP=1, 1 proc x 2 threads", 1, 2, []),
                                            ("TP=2, 2 procs x 1 thread", 2, 1, ["--tensor-model-parallel-size", "2"]),
                                            ("TP=2 + SP", 2, 1, ["--tensor-model-parallel-size", "2", "--sequence-parallel"])):
            res = run(nproc, threads, common + flags, os.path.join(tmp, str(len(rows))), a.iters)
            sp = "--sequence-parallel" in flags
            analytic = 0
            if nproc > 1:
                vol = tp_step_bytes(L, b, s, h, 1, sp, sp_grad_elems=(2 * L + 1) * h)
                analytic = sum(vol.values()) + 8  # + the global grad norm (one float64)
            rows.append(dict(name=name, **res, analytic_bytes=analytic))
            print(f"{name:28s} {res['tokens_per_sec']:8.0f} tok/s  bytes/step measured "
                  f"{res['comm_bytes_per_step']:>10.0f} analytic {analytic:>10d}", flush=True)
    base = rows[0]["tokens_per_sec"]
    print("\n| layout | tokens/s | vs TP=1 | bytes/step measured | analytic |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['tokens_per_sec']:.0f} | {r['tokens_per_sec'] / base:.2f}x | "
              f"{r['comm_bytes_per_step']:.0f} | {r['analytic_bytes']} |")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"seq_length": s, "micro_batch_size": b, "layers": L, "hidden": h, "rows": rows}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
