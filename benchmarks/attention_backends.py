"""Forward+backward time of the CPU attention backends on packed documents.

    python benchmarks/attention_backends.py --seq 1024 --batch 4 --heads 8 --head-dim 64 --docs 8

Times "dense" (boolean document mask, the reference), "varlen" (per-document SDPA, with the
grouping plan cached as it is across the layers of one step), "varlen-cold" (plan rebuilt every
call: the once-per-step cost) and "sdpa" (plain causal, no document mask: the speed ceiling, it
does less masking than asked). Backends take turns each iteration; the table shows the median.
Prints a table and writes JSON. Makes no assertion on time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megatron_th.model import attention as attn  # noqa: E402


def random_cu_seqlens(batch, seq, docs, gen):
    """int32 cu_seqlens with `docs` documents of random length in every row."""
    bounds = [0]
    for row in range(batch):
        cuts = (torch.randperm(seq - 1, generator=gen)[: docs - 1] + 1).sort().values.tolist()
        bounds += [row * seq + c for c in cuts] + [(row + 1) * seq]
    return torch.tensor(bounds, dtype=torch.int32)


def make_step(name, q, k, v, cu, grad):
    """One forward+backward of backend `name` ("varlen-cold": varlen with its plan cache cleared)."""
    backend = "varlen" if name == "varlen-cold" else name
    if backend == "sdpa":
        cu = None  # speed ceiling: plain causal, no document mask

    def step():
        if name == "varlen-cold":
            attn._varlen_plan.cache_clear()
        for x in (q, k, v):
            x.grad = None
        attn.attention(q, k, v, cu_seqlens=cu, backend=backend).backward(grad)

    return step


def time_round_robin(steps, iters, warmup):
    """ms per call of every step; the backends take turns so that load drift hits them alike."""
    times = {name: [] for name in steps}
    for i in range(warmup + iters):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="GQA kv heads (default: --heads)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--docs", type=int, default=8, help="documents per row")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backends", default="dense,varlen,varlen-cold,sdpa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "attention_backends.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    kvh = args.kv_heads or args.heads
    b, s, hd = args.batch, args.seq, args.head_dim

    def rand(h):
        return torch.randn(b, h, s, hd, generator=gen).to(dtype).requires_grad_()

    q, k, v = rand(args.heads), rand(kvh), rand(kvh)
    grad = torch.randn(b, args.heads, s, hd, generator=gen).to(dtype)
    cu = random_cu_seqlens(b, s, args.docs, gen)

    names = args.backends.split(",")
    times = time_round_robin({n: make_step(n, q, k, v, cu, grad) for n in names}, args.iters, args.warmup)
    rows = [{"backend": n, "ms_per_iter": statistics.median(times[n]), "ms_min": min(times[n]),
             "ms_mean": statistics.fmean(times[n])} for n in names]
    dense = next((r["ms_per_iter"] for r in rows if r["backend"] == "dense"), None)
    for r in rows:
        r["speedup_vs_dense"] = dense / r["ms_per_iter"] if dense else None

    print(f"forward+backward, b={b} s={s} heads={args.heads}/{kvh} hd={hd} docs/row={args.docs} "
          f"{args.dtype} threads={args.threads} iters={args.iters} (median)")
    print(f"{'backend':<12} {'ms/iter':>10} {'speedup vs dense':>17}")
    for r in rows:
        sp = f"{r['speedup_vs_dense']:.2f}x" if r["speedup_vs_dense"] else "-"
        print(f"{r['backend']:<12} {r['ms_per_iter']:>10.2f} {sp:>17}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": vars(args) | {"kv_heads": kvh},
        "doc_lengths": (cu[1:] - cu[:-1]).tolist(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
