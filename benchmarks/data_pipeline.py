#!/usr/bin/env python
"""Data pipeline throughput: preprocess tokens/s (1 vs 2 workers), sample-index build (C++ vs numpy
reference), loader samples/s. Prints a table and writes JSON. Not a test: nothing is asserted."""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_th.data import kernels, kernels_ref  # noqa: E402
from megatron_th.data.embedded import DEFAULT_TOKENIZER, corpus_files  # noqa: E402
from megatron_th.data.gpt_dataset import GPTDataset  # noqa: E402
from megatron_th.data.indexed import IndexedDataset  # noqa: E402
from megatron_th.data.loader import PretrainingLoader  # noqa: E402
from megatron_th.data.preprocess import build_parser, run  # noqa: E402


def make_big_corpus(path: str, target_mb: float) -> int:
    docs = []
    for f in corpus_files():
        with open(f, "rb") as fh:
            docs.extend(line for line in fh if line.strip())
    blob = b"".join(docs)
    reps = int(target_mb * 1e6 // len(blob)) + 1
    with open(path, "wb") as out:
        for _ in range(reps):
            out.write(blob)
    return os.path.getsize(path)


def bench_preprocess(tmp: str, target_mb: float, workers: list[int]) -> list[dict]:
    src = os.path.join(tmp, "big.jsonl")
    size = make_big_corpus(src, target_mb)
    rows = []
    for w in workers:
        args = build_parser().parse_args(["--input", src, "--tokenizer-model", DEFAULT_TOKENIZER, "--output-prefix",
                                          os.path.join(tmp, f"w{w}"), "--append-eod", "--workers", str(w), "--quiet"])
        t = time.perf_counter()
        s = run(args, log=lambda m: None)
        dt = time.perf_counter() - t
        rows.append({"workers": w, "input_mb": size / 1e6, "docs": s["docs_written_text"], "tokens": s["tokens"],
                     "seconds": dt, "tokens_per_sec": s["tokens"] / dt, "mb_per_sec": size / 1e6 / dt})
    return rows


def bench_sample_index(total_tokens: int, seq_length: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 1000, size=total_tokens // 500).astype(np.int32)
    doc_idx = rng.permutation(len(sizes)).astype(np.int64)
    n = (int(sizes.sum()) - 1) // seq_length
    res = {"tokens": int(sizes.sum()), "documents": len(sizes), "samples": n, "seq_length": seq_length,
           "have_cpp": kernels.HAVE_CPP}
    for name, fn in (("cpp", kernels.build_sample_idx), ("numpy_reference", kernels_ref.build_sample_idx)):
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            out = fn(sizes, doc_idx, seq_length, n)
            best = min(best, time.perf_counter() - t)
        res[f"{name}_seconds"] = best
        res[f"{name}_checksum"] = int(out.sum())
    res["speedup"] = res["numpy_reference_seconds"] / res["cpp_seconds"]
    res["identical"] = res["cpp_checksum"] == res["numpy_reference_checksum"]
    # the blending kernel too, at 1M samples over 4 datasets
    w = np.array([0.4, 0.3, 0.2, 0.1])
    for name, fn in (("cpp", kernels.build_blending_indices), ("numpy_reference", kernels_ref.build_blending_indices)):
        t = time.perf_counter()
        fn(w, 1_000_000 if name == "cpp" else 100_000)
        res[f"blend_{name}_us_per_sample"] = (time.perf_counter() - t) / (1_000_000 if name == "cpp" else 100_000) * 1e6
    return res


def bench_loader(tmp: str, seq_length: int, batches: int) -> dict:
    prefix = os.path.join(tmp, "w1_text_document")
    ds = GPTDataset(IndexedDataset(prefix), 0, (0, len(IndexedDataset(prefix))), seq_length, 0, batches * 32,
                    os.path.join(tmp, "cache"))
    loader = PretrainingLoader(ds, 32, 8, 2, reset_position_ids=True, reset_attention_mask=True)
    t = time.perf_counter()
    for _ in range(batches):
        loader.next_global_batch()
    dt = time.perf_counter() - t
    return {"seq_length": seq_length, "samples": batches * 32, "samples_per_sec": batches * 32 / dt,
            "tokens_per_sec": batches * 32 * seq_length / dt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus-mb", type=float, default=50.0, help="repeat the embedded corpus to this size")
    p.add_argument("--index-tokens", type=int, default=100_000_000)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--json", default="benchmarks/results/data_pipeline.json")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pre = bench_preprocess(tmp, a.corpus_mb, [1, 2])
        idx = bench_sample_index(a.index_tokens, a.seq_length, reps=3)
        ld = bench_loader(tmp, 1024, 200)
    print(f"\npreprocess ({pre[0]['input_mb']:.1f} MB of jsonl, {pre[0]['tokens'] / 1e6:.1f}M tokens)")
    print(f"{'workers':>8} {'seconds':>9} {'Mtok/s':>8} {'MB/s':>7}")
    for r in pre:
        print(f"{r['workers']:>8} {r['seconds']:>9.1f} {r['tokens_per_sec'] / 1e6:>8.2f} {r['mb_per_sec']:>7.2f}")
    print(f"\nsample index: {idx['tokens'] / 1e6:.0f}M tokens, {idx['documents']} docs, {idx['samples']} samples "
          f"of {idx['seq_length']}")
    print(f"  C++ {idx['cpp_seconds'] * 1e3:.1f} ms | numpy reference {idx['numpy_reference_seconds'] * 1e3:.1f} ms "
          f"| speedup {idx['speedup']:.1f}x | identical {idx['identical']}")
    print(f"  blending: C++ {idx['blend_cpp_us_per_sample']:.3f} us/sample | reference "
          f"{idx['blend_numpy_reference_us_per_sample']:.3f} us/sample")
    print(f"\nloader: {ld['samples_per_sec']:.0f} samples/s ({ld['tokens_per_sec'] / 1e6:.2f}M tokens/s) at seq "
          f"{ld['seq_length']}, with position ids, loss mask and cu_seqlens")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"preprocess": pre, "sample_index": idx, "loader": ld}, f, indent=1)
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
