#!/usr/bin/env python
"""--compile vs eager: training-step throughput of the same model, both in one invocation.

The docs/performance.md configuration by default (d_model 512, 8 layers, 8 heads, seq 1024, vocab
8000, batch 1, RoPE / RMSNorm / SwiGLU, tied embeddings, fp32), one forward + backward + AdamW
step with gradient clipping. The compiled model is the eager one's twin (same seed) with every
transformer layer compiled by training/compile.py ``compile_layers`` (inductor), exactly as
``--compile`` does. After warm-up (compilation), rounds alternate which side runs first; each
round times ``--steps`` steps per side and gives one ratio (of wall time, and of this process's
CPU time, which other processes on a shared machine disturb less); the result is the median ratio
(>= 5 rounds: this machine is shared and noisy). ``--documents L`` packs each row into documents
of mean length L (reset attention mask: the varlen path). Prints a table, writes JSON.
Not a test: nothing is asserted."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_th.config import Config, finalize  # noqa: E402
from megatron_th.model.documents import DocumentPlan  # noqa: E402
from megatron_th.model.gpt import build_model  # noqa: E402
from megatron_th.training.compile import compile_layers  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_step(model, tokens, labels, cus):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    state = {"i": 0}

    def step():
        cu = cus[state["i"] % len(cus)] if cus else None
        state["i"] += 1
        docs = DocumentPlan(cu, *tokens.shape) if cu is not None else None
        model(tokens=tokens, labels=labels, documents=docs).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(step, n):
    """(wall seconds, this process's CPU seconds) per step."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def layouts(b, s, mean_len, count, seed=0):
    """``count`` random cu_seqlens of documents with exponential lengths (mean ``mean_len``)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        cu = [0]
        for r in range(b):
            pos = 0
            while pos < s:
                pos = min(s, pos + 1 + int(torch.empty(1).exponential_(1 / mean_len, generator=g)))
                cu.append(r * s + pos)
        out.append(torch.tensor(cu, dtype=torch.int32))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--documents", type=int, default=0, help="mean document length (0: one per row)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=1, help="timed steps per side and round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/compile_throughput.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length = a.layers, a.hidden, a.heads, a.seq
    m.position_embedding_type, m.normalization, m.swiglu, m.disable_bias_linear = "rope", "RMSNorm", True, True
    m.hidden_dropout = m.attention_dropout = 0.0
    m.make_vocab_size_divisible_by = 64
    finalize(cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    labels = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    cus = layouts(a.batch, a.seq, a.documents, 8) if a.documents else []
    eager = build_model(m, a.vocab, seed=0)
    compiled = build_model(m, a.vocab, seed=0)
    compile_layers([compiled])
    steps = {"eager": make_step(eager, tokens, labels, cus), "--compile": make_step(compiled, tokens, labels, cus)}
    print(f"load average before warm-up: {load()}", flush=True)
    t = time.perf_counter()
    steps["--compile"]()  # compiles (inductor)
    compile_s = time.perf_counter() - t
    steps["--compile"]()
    steps["eager"]()
    print(f"compilation (first step): {compile_s:.1f} s; load average {load()}", flush=True)
    rounds = []
    for r in range(a.rounds):
        order = ["eager", "--compile"] if r % 2 == 0 else ["--compile", "eager"]
        sec = {name: timed(steps[name], a.steps) for name in order}
        rounds.append({"eager_s": sec["eager"][0], "compile_s": sec["--compile"][0],
                       "ratio": sec["eager"][0] / sec["--compile"][0], "eager_cpu_s": sec["eager"][1],
                       "compile_cpu_s": sec["--compile"][1], "cpu_ratio": sec["eager"][1] / sec["--compile"][1],
                       "load": load()})
        x = rounds[-1]
        print(f"round {r}: eager {x['eager_s']:.3f} s/step ({x['eager_cpu_s']:.2f} CPU s), --compile "
              f"{x['compile_s']:.3f} s/step ({x['compile_cpu_s']:.2f} CPU s), ratio {x['ratio']:.3f}x wall, "
              f"{x['cpu_ratio']:.3f}x CPU (load {x['load']})", flush=True)
    tok = a.batch * a.seq
    med = {k: statistics.median(x[k] for x in rounds)
           for k in ("eager_s", "compile_s", "ratio", "eager_cpu_s", "compile_cpu_s", "cpu_ratio")}
    print("\n| implementation | tokens/s (median) | vs eager, wall (median of per-round ratios) | "
          "vs eager, process CPU time |")
    print("|---|---|---|---|")
    print(f"| eager | {tok / med['eager_s']:.0f} | 1.00x | 1.00x |")
    print(f"| `--compile` (each layer, inductor) | {tok / med['compile_s']:.0f} | {med['ratio']:.3f}x | "
          f"{med['cpu_ratio']:.3f}x |")
    print(f"rounds {a.rounds} x {a.steps} steps; load average at the end {load()}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"config": vars(a), "compile_first_step_s": compile_s, "rounds": rounds, "median": med}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
