#!/usr/bin/env python
"""Data pipeline throughput: preprocess tokens/s (1 vs 2 workers; benchmarks/preprocess_throughput.py
compares against the tool at b6a12b9 and the tokenizer's limit), sample-index build (C++ vs numpy
reference), blending indices (ours vs megatron-core 0.19.2's C++ helper, same inputs, identical
output, median of alternating runs), loader samples/s. Prints a table and writes JSON. Not a test:
nothing is asserted. ``--parts blending`` runs one part alone (the machine's load average is printed
next to each timing: re-run on a quiet machine for the table in docs/performance.md)."""
import argparse
import importlib.metadata
import importlib.util
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
    return res


def megatron_helpers():
    """megatron-core's compiled ``megatron/core/datasets/helpers_cpp`` loaded from its file (the
    package's own imports need triton; `make install` puts megatron-core 0.19.2 in with --no-deps)."""
    folder = str(importlib.metadata.distribution("megatron-core").locate_file("megatron/core/datasets"))
    so = [f for f in os.listdir(folder) if f.startswith("helpers_cpp") and f.endswith(".so")]
    if not so:
        raise FileNotFoundError(f"{folder}: no compiled helpers_cpp")
    spec = importlib.util.spec_from_file_location("helpers_cpp", os.path.join(folder, so[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_blending(samples: int, weights: list[float], runs: int) -> dict:
    """Blending indices for ``samples`` outputs over len(weights) datasets: megatron-core's helper
    (output arrays allocated with np.zeros, as its BlendedDataset does) vs ours with its default
    threads and with one thread, each timed including its output allocation; the order of the three
    rotates every run. Ratios are per run (ours / theirs), reported as medians."""
    helpers = megatron_helpers()
    w = np.asarray(weights, dtype=np.float64)
    norm = w / sum(w.tolist())  # what ours normalizes to (summed left to right)

    def theirs():
        index, sample = np.zeros(samples, dtype=np.int16), np.zeros(samples, dtype=np.int64)
        helpers.build_blending_indices(index, sample, norm, len(norm), samples, False)
        return index, sample

    sides = {"megatron_core": theirs, "ours": lambda: kernels.build_blending_indices(w, samples),
             "ours_1_thread": lambda: kernels.build_blending_indices(w, samples, num_threads=1)}
    ref = theirs()
    identical = all(all(np.array_equal(a, b) for a, b in zip(fn(), ref)) for fn in sides.values())
    del ref
    times: dict[str, list[float]] = {k: [] for k in sides}
    loads = []
    names = list(sides)
    for r in range(runs):
        loads.append(os.getloadavg()[0])
        for name in names[r % 3:] + names[:r % 3]:
            t = time.perf_counter()
            out = sides[name]()
            times[name].append(time.perf_counter() - t)
            del out
    ratio = [o / m for o, m in zip(times["ours"], times["megatron_core"])]
    ratio1 = [o / m for o, m in zip(times["ours_1_thread"], times["megatron_core"])]
    return {"samples": samples, "weights": weights, "runs": runs, "identical": bool(identical),
            "threads": os.cpu_count(), "seconds": times,
            "median_ms": {k: float(np.median(v)) * 1e3 for k, v in times.items()},
            "ratio_median": float(np.median(ratio)), "ratio_1_thread_median": float(np.median(ratio1)),
            "ratios": ratio, "load_average_1min": loads}


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


PARTS = ("preprocess", "sample_index", "blending", "loader")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus-mb", type=float, default=50.0, help="repeat the embedded corpus to this size")
    p.add_argument("--index-tokens", type=int, default=100_000_000)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--blend-samples", type=int, default=10_000_000)
    p.add_argument("--blend-weights", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    p.add_argument("--blend-runs", type=int, default=9, help="alternating runs of each side (median reported)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    p.add_argument("--json", default="benchmarks/results/data_pipeline.json")
    a = p.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "preprocess" in a.parts or "loader" in a.parts:
            out["preprocess"] = bench_preprocess(tmp, a.corpus_mb, [1, 2])
        if "sample_index" in a.parts:
            out["sample_index"] = bench_sample_index(a.index_tokens, a.seq_length, reps=3)
        if "blending" in a.parts:
            out["blending"] = bench_blending(a.blend_samples, a.blend_weights, a.blend_runs)
        if "loader" in a.parts:
            out["loader"] = bench_loader(tmp, 1024, 200)
    if "preprocess" in out:
        pre = out["preprocess"]
        print(f"\npreprocess ({pre[0]['input_mb']:.1f} MB of jsonl, {pre[0]['tokens'] / 1e6:.1f}M tokens)")
        print(f"{'workers':>8} {'seconds':>9} {'Mtok/s':>8} {'MB/s':>7}")
        for r in pre:
            print(f"{r['workers']:>8} {r['seconds']:>9.1f} {r['tokens_per_sec'] / 1e6:>8.2f} {r['mb_per_sec']:>7.2f}")
    if "sample_index" in out:
        idx = out["sample_index"]
        print(f"\nsample index: {idx['tokens'] / 1e6:.0f}M tokens, {idx['documents']} docs, {idx['samples']} "
              f"samples of {idx['seq_length']}")
        print(f"  C++ {idx['cpp_seconds'] * 1e3:.1f} ms | numpy reference {idx['numpy_reference_seconds'] * 1e3:.1f} "
              f"ms | speedup {idx['speedup']:.1f}x | identical {idx['identical']}")
    if "blending" in out:
        b = out["blending"]
        m = b["median_ms"]
        print(f"\nblending indices: {b['samples'] / 1e6:g}M samples x {len(b['weights'])} datasets, median of "
              f"{b['runs']} alternating runs, identical output: {b['identical']}")
        print(f"  megatron-core 0.19.2 helper {m['megatron_core']:.1f} ms | ours {m['ours']:.1f} ms "
              f"({b['ratio_median']:.2f}x its time) | ours on 1 thread {m['ours_1_thread']:.1f} ms "
              f"({b['ratio_1_thread_median']:.2f}x)")
        print("  load average (1 min) at each run: " + " ".join(f"{x:.1f}" for x in b["load_average_1min"]))
    if "loader" in out:
        ld = out["loader"]
        print(f"\nloader: {ld['samples_per_sec']:.0f} samples/s ({ld['tokens_per_sec'] / 1e6:.2f}M tokens/s) at seq "
              f"{ld['seq_length']}, with position ids, loss mask and cu_seqlens")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
