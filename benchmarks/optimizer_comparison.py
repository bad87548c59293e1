#!/usr/bin/env python
"""AdamW, Adafactor and Muon on the embedded corpus, with and without an EMA of the weights.

    python benchmarks/optimizer_comparison.py                  # 11 runs, about half an hour on 2 CPU cores
    python benchmarks/optimizer_comparison.py --iters 60 --lrs adam=3e-3 muon=3e-3   # a quicker look

Every run trains a small Llama-style model (examples/tiny.yaml with 2 layers, d 128, 4 heads on 2
KV groups, seq 128, 8 sequences a step: 1.4M parameters, 1.0M of them the 8k-token embedding) on
the embedded Thai+English corpus for the same number of steps, cosine LR from --lr to --lr/10 after
10 warmup steps, in one process (fp32, CPU), with ``--ema-decay`` and ``--eval-ema``: the last
evaluation (``--full-validation``: every valid sample once) gives the valid loss of the final
weights and of their EMA from the same run. For each optimizer the LR with the lowest final valid
loss (without EMA) among ``--lrs`` is chosen and reported; the JSON keeps every run.

Writes benchmarks/results/optimizer_comparison.json and prints a Markdown table for
docs/performance.md. A measurement of this small setup, not a claim about which optimizer is
better in general. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_LRS = {"adam": [1e-3, 3e-3, 1e-2], "adafactor": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "muon": [1e-3, 3e-3, 1e-2]}
MODEL = ["--num-layers", "2", "--hidden-size", "128", "--ffn-hidden-size", "352", "--num-attention-heads", "4",
         "--num-query-groups", "2", "--seq-length", "128", "--global-batch-size", "8", "--micro-batch-size", "8"]
NAMES = {"adam": "AdamW", "adafactor": "Adafactor", "muon": "Muon (+ AdamW)"}


def one_run(opt: str, lr: float, a, workdir: str) -> dict:
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    log_dir = os.path.join(workdir, f"{opt}_{lr:g}")
    argv = ["--config", os.path.join(ROOT, "examples", "tiny.yaml"), *MODEL, "--optimizer", opt, "--lr", str(lr),
            "--min-lr", str(lr / 10), "--train-iters", str(a.iters), "--lr-decay-iters", str(a.iters),
            "--lr-warmup-iters", "10", "--ema-decay", str(a.ema_decay), "--eval-ema", "--full-validation",
            "--eval-interval", str(a.iters), "--log-interval", str(a.iters), "--log-dir", log_dir,
            "--num-threads", str(a.threads), "--seed", str(a.seed), "--peak-tflops", "1"]
    cfg, _ = parse_config(argv)
    cfg.train.save = None  # tiny.yaml saves; the comparison needs no checkpoint
    t0 = time.time()
    out = pretrain(cfg, log=lambda *x: None)
    evals = [json.loads(line) for line in open(os.path.join(log_dir, "metrics.jsonl")) if '"split"' in line]
    final = {e["split"]: e["lm_loss"] for e in evals if e["iteration"] == a.iters}
    return {"optimizer": opt, "lr": lr, "train_loss_last10": sum(out["losses"][-10:]) / 10,
            "valid": final.get("valid"), "valid_ema": final.get("valid_ema"), "seconds": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=150, help="training steps per run (default 150)")
    p.add_argument("--ema-decay", type=float, default=0.95)
    p.add_argument("--lrs", nargs="+", default=None,
                   help="per optimizer LRs to try, e.g. adam=1e-3,3e-3 muon=1e-3 (default: three each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "optimizer_comparison.json"))
    a = p.parse_args(argv)
    lrs = DEFAULT_LRS
    if a.lrs:
        lrs = {k: [float(x) for x in v.split(",")] for k, v in (s.split("=", 1) for s in a.lrs)}
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for opt, values in lrs.items():
            for lr in values:
                r = one_run(opt, lr, a, work)
                runs.append(r)
                print(f"{opt:9s} lr {lr:<7g} valid {r['valid']:.4f}  valid_ema {r['valid_ema']:.4f}  "
                      f"train(last 10) {r['train_loss_last10']:.4f}  {r['seconds']:.0f} s", flush=True)
    best = {}
    for r in runs:
        if r["optimizer"] not in best or r["valid"] < best[r["optimizer"]]["valid"]:
            best[r["optimizer"]] = r
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"iters": a.iters, "ema_decay": a.ema_decay, "lrs": lrs, "runs": runs, "best": best}, f, indent=1)
    print(f"\n| optimizer | LR (best of {', '.join(f'{k}: ' + '/'.join(f'{x:g}' for x in v) for k, v in lrs.items())}) "
          f"| train loss (last 10 steps) | valid loss | valid loss, EMA {a.ema_decay:g} |")
    print("|---|---|---|---|---|")
    for opt, r in best.items():
        print(f"| {NAMES.get(opt, opt)} | {r['lr']:g} | {r['train_loss_last10']:.3f} | {r['valid']:.3f} | "
              f"{r['valid_ema']:.3f} |")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
