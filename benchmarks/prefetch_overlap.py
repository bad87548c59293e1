#!/usr/bin/env python
"""Data loading on or off the critical path: the training loop's wait for the next global batch,
with the plain loader and with data/prefetch.py's background thread, both in one invocation.

The loop of training/pretrain.py reduced to its data and compute: global batches of the GPT
dataset over the embedded corpus (packed documents: position ids, loss mask, cu_seqlens), one
forward + backward per micro-batch of the examples/tiny.yaml model (training/step.py
forward_backward). Rounds alternate which loader runs first; per round and loader, the mean
time the loop spends inside ``next_global_batch()`` and the mean step time from the second step
on (a loader's first batch is built on demand either way); medians over rounds.
Prints a table, writes JSON. Not a test: nothing is asserted."""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_th.config import Config, finalize  # noqa: E402
from megatron_th.data.embedded import DEFAULT_TOKENIZER, embedded_data_path  # noqa: E402
from megatron_th.data.gpt_dataset import build_datasets  # noqa: E402
from megatron_th.data.loader import PretrainingLoader  # noqa: E402
from megatron_th.data.prefetch import Prefetcher  # noqa: E402
from megatron_th.data.tokenizer import load_tokenizer  # noqa: E402
from megatron_th.model.gpt import build_model  # noqa: E402
from megatron_th.training.step import forward_backward  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per loader and round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/prefetch_overlap.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups = 4, 256, 8, 4
    m.ffn_hidden_size, m.seq_length, m.make_vocab_size_divisible_by = 704, a.seq, 128
    m.position_embedding_type, m.normalization, m.swiglu, m.disable_bias_linear = "rope", "RMSNorm", True, True
    m.hidden_dropout = m.attention_dropout = 0.0
    finalize(cfg)
    tok = load_tokenizer(DEFAULT_TOKENIZER)
    need = (2 * a.rounds + 1) * a.steps * a.global_batch  # the warm-up run, then both loaders per round
    with tempfile.TemporaryDirectory() as cache:
        ds = build_datasets(embedded_data_path(log=lambda *x: None), "100,0,0", a.seq, 0, {"train": need}, cache,
                            log=lambda *x: None)["train"]
        model = build_model(m, tok.vocab_size, seed=0)
        consumed = {"n": 0}

        def loader(prefetch: bool):
            inner = PretrainingLoader(ds, a.global_batch, a.micro_batch, tok.eod, consumed_samples=consumed["n"],
                                      reset_position_ids=True, reset_attention_mask=True)
            consumed["n"] += a.steps * a.global_batch
            return Prefetcher(inner, batches=a.steps) if prefetch else inner

        def run(prefetch: bool) -> dict:
            waits, steps = [], []
            ld = loader(prefetch)
            try:
                for _ in range(a.steps):
                    t0 = time.perf_counter()
                    micro = ld.next_global_batch()
                    t1 = time.perf_counter()
                    forward_backward(model, micro, 1.0, 1.0, "cpu")
                    model.zero_grad(set_to_none=True)
                    waits.append(t1 - t0)
                    steps.append(time.perf_counter() - t0)
            finally:
                if prefetch:
                    ld.close()
            # the first batch of a loader is built on demand either way: steady state from the second
            return {"wait_ms": 1e3 * statistics.mean(waits[1:]), "step_ms": 1e3 * statistics.mean(steps[1:])}

        run(False)  # warm-up
        print(f"load average before: {load()}", flush=True)
        rounds = []
        for r in range(a.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            res = {("prefetch" if pf else "plain"): run(pf) for pf in order}
            res["load"] = load()
            rounds.append(res)
            print(f"round {r}: plain wait {res['plain']['wait_ms']:.2f} ms, step {res['plain']['step_ms']:.0f} ms | "
                  f"prefetch wait {res['prefetch']['wait_ms']:.3f} ms, step {res['prefetch']['step_ms']:.0f} ms "
                  f"(load {res['load']})", flush=True)
    med = {k: {f: statistics.median(x[k][f] for x in rounds) for f in ("wait_ms", "step_ms")}
           for k in ("plain", "prefetch")}
    print("\n| loader | wait for the batch (ms, median) | step (ms, median) |")
    print("|---|---|---|")
    for k in ("plain", "prefetch"):
        print(f"| {k} | {med[k]['wait_ms']:.3f} | {med[k]['step_ms']:.0f} |")
    print(f"seq {a.seq}, global batch {a.global_batch} x micro-batch {a.micro_batch}; load average at the end {load()}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"config": vars(a), "rounds": rounds, "median": med}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
