#!/usr/bin/env python
"""Training throughput: megatron_th vs a plain nanoGPT-style loop (eager and torch.compile) and
transformers' LlamaForCausalLM, same model size, in one run. Reports tokens/s and model FLOP/s as a
fraction of the matmul peak of the same dtype measured in the same run. Prints a table, writes JSON.
Not a test: nothing is asserted."""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_th.config import Config, finalize  # noqa: E402
from megatron_th.model.flops import flops_per_iteration  # noqa: E402
from megatron_th.model.gpt import build_model  # noqa: E402
from megatron_th.training.metrics import measure_matmul_tflops  # noqa: E402
from megatron_th.training.compile import compile_layers  # noqa: E402
from megatron_th.training.optimizer import MixedPrecisionOptimizer  # noqa: E402


# ---- the plain baseline: a nanoGPT-style Llama block, written here, no framework -----------------
class PlainBlock(nn.Module):
    def __init__(self, h, heads, ffn):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(h), nn.RMSNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h, bias=False), nn.Linear(h, h, bias=False)
        self.fc1, self.fc2 = nn.Linear(h, 2 * ffn, bias=False), nn.Linear(ffn, h, bias=False)

    def forward(self, x, cos, sin):
        b, s, h = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        rot = lambda t: t * cos + torch.cat((-t[..., t.shape[-1] // 2:], t[..., : t.shape[-1] // 2]), -1) * sin  # noqa: E731
        y = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, h))
        g, u = self.fc1(self.n2(x)).chunk(2, -1)
        return x + self.fc2(F.silu(g) * u)


class PlainGPT(nn.Module):
    def __init__(self, vocab, h, layers, heads, ffn):
        super().__init__()
        self.emb = nn.Embedding(vocab, h)
        self.blocks = nn.ModuleList(PlainBlock(h, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(h)
        self.hd = h // heads

    def forward(self, idx, targets):
        s = idx.shape[1]
        inv = 1.0 / 10000 ** (torch.arange(0, self.hd, 2).float() / self.hd)
        f = torch.outer(torch.arange(s).float(), inv)
        emb = torch.cat((f, f), -1)
        x = self.emb(idx)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits = self.norm(x) @ self.emb.weight.t()
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def time_steps(step, warmup, iters):
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t) / iters


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", default="benchmarks/results/train_throughput.json")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length = a.layers, a.hidden, a.heads, a.seq
    m.position_embedding_type, m.normalization, m.swiglu, m.disable_bias_linear = "rope", "RMSNorm", True, True
    m.hidden_dropout = m.attention_dropout = 0.0
    m.make_vocab_size_divisible_by = 64
    cfg.optim.clip_grad = 1.0
    finalize(cfg)
    flops = flops_per_iteration(m, a.batch, a.seq, a.vocab)
    tokens = a.batch * a.seq
    idx = torch.randint(0, a.vocab, (a.batch, a.seq))
    tgt = torch.randint(0, a.vocab, (a.batch, a.seq))
    rows = []
    for dname in a.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
        cfg.optim.bf16 = dname == "bf16"
        peak = measure_matmul_tflops(dtype, n=2048, reps=3)
        runs = {}

        model = build_model(m, a.vocab, seed=0, dtype=dtype)
        opt = MixedPrecisionOptimizer(list(model.named_parameters()), cfg.optim)

        def ours():
            loss = model(tokens=idx, labels=tgt).mean()
            loss.backward()
            opt.step(1e-4)
        runs["megatron_th"] = ours

        plain = PlainGPT(a.vocab, a.hidden, a.layers, a.heads, m.ffn_hidden_size).to(dtype)
        popt = torch.optim.AdamW(plain.parameters(), lr=1e-4)

        def plain_step(fn=plain):
            fn(idx, tgt).backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            popt.step()
            popt.zero_grad(set_to_none=True)
        runs["plain eager"] = plain_step
        if not a.no_compile:
            compiled = torch.compile(plain)
            runs["plain compiled"] = lambda: plain_step(compiled)
            # what --compile does: each transformer layer compiled (training/compile.py), on a twin model
            cmodel = build_model(m, a.vocab, seed=0, dtype=dtype)
            compile_layers([cmodel])
            copt = MixedPrecisionOptimizer(list(cmodel.named_parameters()), cfg.optim)
            runs["megatron_th --compile"] = lambda: (cmodel(tokens=idx, labels=tgt).mean().backward(), copt.step(1e-4))
        try:
            from transformers import LlamaConfig, LlamaForCausalLM

            hf = LlamaForCausalLM(LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=m.ffn_hidden_size,
                                              num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                              max_position_embeddings=a.seq, tie_word_embeddings=True,
                                              attn_implementation="sdpa")).to(dtype)
            hopt = torch.optim.AdamW(hf.parameters(), lr=1e-4)

            def hf_step():
                hf(input_ids=idx, labels=tgt).loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
                hopt.step()
                hopt.zero_grad(set_to_none=True)
            runs["transformers Llama"] = hf_step
        except ImportError:
            print("transformers not installed: skipping its row")
        for name, fn in runs.items():
            sec = time_steps(fn, a.warmup, a.iters)
            rows.append({"dtype": dname, "impl": name, "step_s": sec, "tokens_per_sec": tokens / sec,
                         "tflops": flops / sec / 1e12, "matmul_peak_tflops": peak,
                         "frac_of_peak": flops / sec / 1e12 / peak})
            print(f"{dname:5s} {name:24s} {sec:7.3f} s/step {tokens / sec:9.0f} tok/s "
                  f"{100 * flops / sec / 1e12 / peak:5.1f}% of {peak:.3f} TFLOP/s peak", flush=True)
    print(f"\n| dtype | implementation | tokens/s | vs plain eager | vs plain compiled | % of matmul peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = {x["impl"]: x["tokens_per_sec"] for x in rows if x["dtype"] == r["dtype"]}
        e = r["tokens_per_sec"] / base["plain eager"]
        c = r["tokens_per_sec"] / base["plain compiled"] if "plain compiled" in base else math.nan
        print(f"| {r['dtype']} | {r['impl']} | {r['tokens_per_sec']:.0f} | {e:.2f}x | {c:.2f}x | {100 * r['frac_of_peak']:.1f}% |")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"config": vars(a), "flops_per_step": flops, "rows": rows}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
