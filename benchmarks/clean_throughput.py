#!/usr/bin/env python
"""Cleaning throughput (tools/clean_data.py): documents/s and MB/s of each stage with 1 and 2 local
workers, and near-duplicate recall of character vs word shingles. Prints tables and writes JSON.
Not a test: nothing is asserted. Needs the [data] extra.

The corpus is megatron_th/data/clean/synthetic.py's (Thai-heavy web-like text with planted
duplicates, boilerplate, PII and junk), several seeds concatenated to --corpus-mb, in 16 files.
Rates are input documents (and input MB) per second, so that stages can be compared and added
up: per second of wall time, and per CPU second (this process and its workers; on a busy machine
wall time measures the neighbours too, CPU time much less). ``scaling`` is wall t(1 worker) /
t(2 workers) on the same 2 tasks; ``cpu MB/s`` of the 1-worker run is the per-core rate.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_th.data.clean import cli, synthetic  # noqa: E402
from megatron_th.data.clean.config import load_config  # noqa: E402
from megatron_th.data.clean.dedup import lsh_probability  # noqa: E402
from megatron_th.data.clean.executors import run_local  # noqa: E402
from megatron_th.data.clean.stages import build_stages, minhash_config  # noqa: E402
from megatron_th.data.clean.tokenizers import CharTokenizer, ThaiWordTokenizer  # noqa: E402


def make_corpus(folder: str, target_mb: float) -> tuple[list, list]:
    docs, seed, size = [], 0, 0
    while size < target_mb * 1e6:
        part = synthetic.make_corpus(seed=seed)
        for d in part:
            if d.original is not None:
                d.original += len(docs)  # an index into the concatenated list
        docs += part
        size += sum(len(d.text.encode()) for d in part)
        seed += 1
    return docs, synthetic.write_jsonl(docs, folder, files=16)


def bench_stages(tmp: str, paths: list, workers: list[int]) -> list[dict]:
    rows, size = [], sum(os.path.getsize(p) for p in paths)
    for w in workers:
        args = cli.build_parser().parse_args(["--input", *paths, "--output-dir", os.path.join(tmp, f"w{w}"),
                                              "--tasks", "2", "--workers", str(w), "--quiet"])
        plan = cli._plan(args)
        cli.check_resume(plan)
        seconds = run_local(plan, build_stages(plan), w, progress=False)
        seconds["total"] = tuple(sum(x) for x in zip(*seconds.values()))
        with open(os.path.join(plan.output_dir, "stats.json")) as f:
            n = json.load(f)["input_docs"]
        for stage, (wall, cpu) in seconds.items():
            rows.append({"workers": w, "stage": stage, "seconds": wall, "cpu_seconds": cpu, "docs_per_sec": n / wall,
                         "mb_per_sec": size / 1e6 / wall, "cpu_mb_per_sec": size / 1e6 / cpu,
                         "input_docs": n, "input_mb": size / 1e6})
    return rows


def shingle_recall(docs: list, tmp: str) -> list[dict]:
    """Pairs found among the planted near-duplicate pairs, by the Jaccard of the pair (character
    5-grams, the proof's definition), for character 5-gram shingles and newmm word 5-grams: LSH
    candidates (a whole bucket agrees), and candidates that pass the verification
    (``min_estimated_jaccard`` of all values agree)."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    cfg = load_config()["minhash"]
    pairs = [(docs[d.original].text, d.text, d.jaccard) for d in docs if d.kind in ("near_dup", "exact_dup")]
    out = []
    for name, tok in (("char 5-grams", CharTokenizer()), ("word 5-grams (newmm)", ThaiWordTokenizer())):
        sig = MinhashDedupSignature(os.path.join(tmp, "sig"), minhash_config(cfg), language=tok)
        hits = {"ge_0.8": [0, 0, 0], "0.5_0.8": [0, 0, 0], "lt_0.5": [0, 0, 0]}
        t = time.perf_counter()
        for a, b, j in pairs:
            sa, sb = (sig.get_signature(sig.get_shingles(x)) for x in (a, b))
            key = "ge_0.8" if j >= 0.8 else "0.5_0.8" if j >= 0.5 else "lt_0.5"
            candidate = any(x == y for x, y in zip(sa, sb))
            agree = sum(x == y for bx, by in zip(sa, sb) for x, y in zip(bx, by)) / sig.num_hashes
            hits[key][0] += candidate
            hits[key][1] += candidate and agree >= cfg["min_estimated_jaccard"]
            hits[key][2] += 1
        out.append({"shingles": name, "seconds": time.perf_counter() - t,
                    **{f"found_{k}": v[0] / max(v[2], 1) for k, v in hits.items()},
                    **{f"verified_{k}": v[1] / max(v[2], 1) for k, v in hits.items()},
                    **{f"pairs_{k}": v[2] for k, v in hits.items()}})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus-mb", type=float, default=8.0, help="size of the generated corpus")
    p.add_argument("--json", default="benchmarks/results/clean_throughput.json")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs, paths = make_corpus(os.path.join(tmp, "crawl"), a.corpus_mb)
        rows = bench_stages(tmp, paths, [1, 2])
        shingles = shingle_recall(docs, tmp)
    print(f"\nclean_data stages on {rows[0]['input_mb']:.1f} MB, {rows[0]['input_docs']} documents, 2 tasks")
    print(f"{'stage':>18} {'1 worker s':>11} {'docs/s':>8} {'MB/s':>6} {'cpu MB/s':>9} {'2 workers s':>12} "
          f"{'docs/s':>8} {'MB/s':>6} {'scaling':>8}")
    by = {(r["workers"], r["stage"]): r for r in rows}
    for stage in [r["stage"] for r in rows if r["workers"] == 1]:
        r1, r2 = by[(1, stage)], by[(2, stage)]
        print(f"{stage:>18} {r1['seconds']:>11.2f} {r1['docs_per_sec']:>8.0f} {r1['mb_per_sec']:>6.2f} "
              f"{r1['cpu_mb_per_sec']:>9.2f} {r2['seconds']:>12.2f} {r2['docs_per_sec']:>8.0f} "
              f"{r2['mb_per_sec']:>6.2f} {r1['seconds'] / r2['seconds']:>7.2f}x")
    total1, total2 = by[(1, "total")], by[(2, "total")]
    per_core = total1["cpu_mb_per_sec"]
    hours = 100e3 / (per_core * 64) / 3600
    scaling = total1["seconds"] / total2["seconds"]
    print(f"\n100 GB on a 64-core node at {per_core:.2f} MB/s per core (CPU time), every core busy: about "
          f"{hours:.1f} hours (measured wall scaling 1 -> 2 workers here: {scaling:.2f}x, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    cfg = load_config()["minhash"]
    b, r = cfg["num_buckets"], cfg["hashes_per_bucket"]
    print(f"\nnear-duplicate candidates, {b} buckets x {r} hashes (P(0.8) = {lsh_probability(0.8, b, r):.3f}, "
          f"P(0.5) = {lsh_probability(0.5, b, r):.3f})")
    print(f"candidates / after verification (min_estimated_jaccard {cfg['min_estimated_jaccard']})")
    print(f"{'shingles':>22} {'J>=0.8':>13} {'0.5-0.8':>13} {'J<0.5':>13} {'pairs':>12} {'seconds':>8}")
    for s in shingles:
        cells = " ".join(f"{s['found_' + k]:>6.3f}/{s['verified_' + k]:.3f}" for k in ("ge_0.8", "0.5_0.8", "lt_0.5"))
        print(f"{s['shingles']:>22} {cells} {s['pairs_ge_0.8']:>4}/{s['pairs_0.5_0.8']}/{s['pairs_lt_0.5']:<3} "
              f"{s['seconds']:>8.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"stages": rows, "estimate_100gb_64_cores_hours": hours, "shingles": shingles,
                   "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}, f, indent=1)
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
