#!/usr/bin/env python
"""tools/preprocess_data.py throughput: this checkout against the same tool at commit b6a12b9 (run
from a `git worktree` made in a temporary directory and removed at the end) and against the
tokenizer's limit, in one invocation. Not a test: nothing is asserted.

Input: the embedded corpus (megatron_th/assets/corpus, its four source files) repeated to
``--input-mb`` (40 MB) of jsonl; the embedded tokenizer; ``--append-eod``; ``--workers`` 2 (the
issue's row) and 1 (one core: on a busy shared machine, where the kernel gives each session an
equal share of the cores, two workers may get no more CPU than the one-thread limit does, so only
this row and the per-CPU-second columns compare like with like there).
Each side runs as its own process (``python -c ... main(argv)``) on that input and on an input of
1/8 of its size; the steady-state rate is (tokens of the big run - tokens of the small run) /
(wall time of the big run - wall time of the small run), which leaves out what every run pays once
(spawning and importing the workers, loading the tokenizer, the final fsync). The same difference
over the runs' CPU time (the process and its workers) gives tokens per CPU-second, which a busy
machine disturbs much less than wall time.

The limit: min(workers, ``os.cpu_count()``) x the rate of one thread of
``SentencePieceProcessor.encode(list)`` (``num_threads=1``) on the same texts, in this process,
nothing else (JSON, files, processes). The per-core rate is the steady-state rate / workers: what
one core adds on a bigger node (e.g. 64 workers on 64 cores), as long as the one reading and
writing process keeps up (it spends ~0.1 CPU-s per 40 MB here).

Each round also times the tokenizer alone on all cores (``num_threads=os.cpu_count()``): on a quiet
machine that is about cores x one thread; on a shared one it shows how much of the machine this
session can get at all (Linux's autogroup gives each session an equal share), and "of tokenizer
now" is our rate over it.

Every round runs both sides (order alternating: ours first in even rounds) and the limit; ratios
are per round and the medians over ``--runs`` rounds (>= 5) are reported, with the 1-minute load
average at each round (on a shared machine, re-run when it is quiet: the lead's table in
docs/performance.md comes from such a run). Outputs of the two sides are compared byte for byte in
every round. ``--breakdown`` (default on) also times, in this process on the big input, the parts of
a worker's task (parsing, encoding, deciding and packing the buffers) and the main process's share
(cutting the input into blocks, appending buffers to the dataset), against the encode-only limit.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_th.data.embedded import DEFAULT_TOKENIZER, corpus_files  # noqa: E402

BASELINE = "b6a12b9"
RUN = ("import sys; sys.path.insert(0, sys.argv[1]); from megatron_th.data.preprocess import main; "
       "sys.exit(main(sys.argv[2:]))")


def make_input(path: str, target_mb: float) -> int:
    """The embedded corpus's documents repeated until ``target_mb`` MB; returns the size in bytes."""
    docs = []
    for f in corpus_files():
        with open(f, "rb") as fh:
            docs.extend(line if line.endswith(b"\n") else line + b"\n" for line in fh if line.strip())
    blob = b"".join(docs)
    with open(path, "wb") as out:
        for _ in range(max(1, round(target_mb * 1e6 / len(blob)))):
            out.write(blob)
    return os.path.getsize(path)


def make_worktree(tmp: str, commit: str) -> str:
    path = os.path.join(tmp, f"baseline_{commit}")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--quiet", path, commit], check=True)
    return path


def remove_worktree(path: str) -> None:
    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=False)
    subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=False)


def run_tool(root: str, src: str, prefix: str, workers: int) -> dict:
    """One run of the tool of checkout ``root``: wall seconds, CPU seconds (it and its workers),
    tokens written."""
    argv = ["--input", src, "--tokenizer-model", DEFAULT_TOKENIZER, "--output-prefix", prefix, "--append-eod",
            "--workers", str(workers), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RUN, root, *argv], capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{root}: preprocess failed:\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "tokens": os.path.getsize(f"{prefix}_text_document.bin") // 2}


def steady(big: dict, small: dict) -> dict:
    tokens = big["tokens"] - small["tokens"]
    return {"tokens_per_sec": tokens / max(big["wall"] - small["wall"], 1e-9),
            "tokens_per_cpu_sec": tokens / max(big["cpu"] - small["cpu"], 1e-9),
            "big": big, "small": small}


def texts_of(path: str) -> list[str]:
    with open(path, "rb") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def limit_rate(sp, texts: list[str], threads: int = 1) -> dict:
    """sentencepiece's batch encode of ``texts`` on ``threads`` threads: tokens per second, wall and CPU."""
    c, t = time.process_time(), time.perf_counter()
    ids = sp.encode(texts, num_threads=threads)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    n = sum(map(len, ids))
    return {"tokens": n, "tokens_per_sec": n / wall, "tokens_per_cpu_sec": n / cpu}


def same_output(a: str, b: str) -> bool:
    return all(open(f"{a}_text_document.{e}", "rb").read() == open(f"{b}_text_document.{e}", "rb").read()
               for e in ("bin", "idx"))


def breakdown(src: str, workers: int) -> dict:  # noqa: ARG001 (the same parts run in every worker)
    """CPU seconds of each part of this checkout's pipeline on ``src``, one part at a time in this
    process (main thread; sentencepiece's one batch thread counts in process time)."""
    from collections import Counter

    from megatron_th.data import preprocess, preprocess_worker, read_blocks
    from megatron_th.data.indexed import IndexedDatasetBuilder

    name, loads = read_blocks.fast_json()
    opts = preprocess_worker.Options(("text",), True, 2, "<u2")
    preprocess._init_task_worker((DEFAULT_TOKENIZER, opts))
    tok = preprocess._TOK
    out: dict = {"json_parser": name}

    def cpu(fn):
        c = time.process_time()
        r = fn()
        out_t = time.process_time() - c
        return r, out_t

    tasks, out["main: cut input into blocks"] = cpu(lambda: list(read_blocks.iter_tasks([src], ["text"], 64)))
    parsed, out["worker: parse lines (JSON, checks)"] = cpu(
        lambda: [list(read_blocks.parse_block(t[1], *t[2], ("text",), loads)) for t in tasks])
    batches = [[it[1]["text"] for it in p] for p in parsed]
    encoded, out["worker: encode (one batch call per task)"] = cpu(
        lambda: [tok.encode_arrays(b) for b in batches])

    class Replay:  # the tokenizer's answers, already computed: times a task without its encoding
        def __init__(self):
            self.queue = iter(encoded)

        def encode_arrays(self, texts, num_threads=1):
            return next(self.queue)

        normalize = tok.normalize  # (texts without a letter near the start; none in this corpus)

    replay = Replay()
    _, out["worker: parse + decide + pack buffers (no encoding)"] = cpu(
        lambda: [preprocess_worker.run_task(replay, opts, loads, t) for t in tasks])
    results, out["worker: whole task"] = cpu(lambda: [preprocess_worker.run_task(tok, opts, loads, t) for t in tasks])
    with tempfile.TemporaryDirectory() as d:
        b = IndexedDatasetBuilder(os.path.join(d, "x"), np.uint16)
        _, out["main: append buffers to the dataset"] = cpu(
            lambda: [b.add_documents(r["tokens"]["text"], r["lengths"]["text"]) for r in results])
        b.discard()
    summary = Counter()
    _, out["main: merge counts"] = cpu(lambda: [summary.update(r["counts"]) for r in results])
    texts = [t for b in batches for t in b]
    _, out["limit: sentencepiece encode(list), 1 thread"] = cpu(lambda: tok.sp.encode(texts, num_threads=1))
    out["tokens"] = int(summary["tokens"])
    return out


def summarize(rounds: list[dict], w: int) -> dict:
    """Medians over rounds of the rows for ``w`` workers."""
    rows = [r[w] for r in rounds]
    med = lambda f: float(np.median([f(x) for x in rows]))  # noqa: E731
    ours = med(lambda x: x["ours"]["tokens_per_sec"])
    return {"workers": w, "ours_tokens_per_sec": ours,
            "baseline_tokens_per_sec": med(lambda x: x["baseline"]["tokens_per_sec"]),
            "ratio": med(lambda x: x["ratio"]), "fraction_of_limit": med(lambda x: x["fraction_of_limit"]),
            "baseline_fraction_of_limit": med(lambda x: x["baseline_fraction_of_limit"]),
            "per_core_tokens_per_sec": ours / w, "cpu_ratio": med(lambda x: x["cpu_ratio"]),
            "cpu_fraction_of_limit": med(lambda x: x["cpu_fraction_of_limit"]),
            "fraction_of_tokenizer_now": med(lambda x: x["fraction_of_tokenizer_now"]),
            "identical": all(x["identical"] for x in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-mb", type=float, default=40.0)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 1],
                   help="worker counts to measure (2: the issue's row; 1: one core, which a busy shared machine "
                        "disturbs least)")
    p.add_argument("--runs", type=int, default=5, help="alternating rounds (median reported)")
    p.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "preprocess_throughput.json"))
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still removes the worktree
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=DEFAULT_TOKENIZER)
    cores = os.cpu_count()
    tmp = tempfile.mkdtemp(prefix="preprocess_bench_")
    base_root = None
    try:
        big, small = os.path.join(tmp, "big.jsonl"), os.path.join(tmp, "small.jsonl")
        size = make_input(big, a.input_mb)
        make_input(small, a.input_mb / 8)
        texts = texts_of(big)
        base_root = make_worktree(tmp, a.baseline)
        sides = {"ours": ROOT, "baseline": base_root}
        rounds = []
        for r in range(a.runs):
            load = os.getloadavg()[0]
            row: dict = {"load_average_1min": load, "limit": limit_rate(sp, texts),
                         "all_cores": limit_rate(sp, texts, cores)}
            one = row["limit"]["tokens_per_sec"]
            for w in a.workers:
                cell = {}
                for name in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                    prefix = os.path.join(tmp, f"{name}{w}")
                    s = run_tool(sides[name], small, prefix + "_small", w)
                    b = run_tool(sides[name], big, prefix, w)
                    cell[name] = steady(b, s)
                cell["identical"] = same_output(os.path.join(tmp, f"ours{w}"), os.path.join(tmp, f"baseline{w}"))
                limit = min(w, cores) * one
                cell["ratio"] = cell["ours"]["tokens_per_sec"] / cell["baseline"]["tokens_per_sec"]
                cell["fraction_of_limit"] = cell["ours"]["tokens_per_sec"] / limit
                cell["baseline_fraction_of_limit"] = cell["baseline"]["tokens_per_sec"] / limit
                cell["cpu_ratio"] = cell["ours"]["tokens_per_cpu_sec"] / cell["baseline"]["tokens_per_cpu_sec"]
                cell["cpu_fraction_of_limit"] = (cell["ours"]["tokens_per_cpu_sec"]
                                                 / row["limit"]["tokens_per_cpu_sec"])
                # what the tokenizer alone gets from this machine right now, on min(w, cores) threads
                ceiling = row["all_cores"]["tokens_per_sec"] if w >= cores else one * w
                cell["fraction_of_tokenizer_now"] = cell["ours"]["tokens_per_sec"] / ceiling
                row[w] = cell
                print(f"round {r + 1}/{a.runs} (load {load:.1f}), {w} worker(s): ours "
                      f"{cell['ours']['tokens_per_sec'] / 1e6:.2f}M tok/s, {a.baseline} "
                      f"{cell['baseline']['tokens_per_sec'] / 1e6:.2f}M, ratio {cell['ratio']:.2f}, limit "
                      f"{min(w, cores)} x {one / 1e6:.2f}M, fraction {cell['fraction_of_limit']:.2f}, "
                      f"identical {cell['identical']}", flush=True)
            rounds.append(row)
        res = {"input_mb": size / 1e6, "tokens": rounds[0][a.workers[0]]["ours"]["big"]["tokens"], "cores": cores,
               "baseline": a.baseline, "runs": a.runs,
               "limit_one_thread_tokens_per_sec": float(np.median([r["limit"]["tokens_per_sec"] for r in rounds])),
               "tokenizer_all_cores_tokens_per_sec": float(np.median([r["all_cores"]["tokens_per_sec"]
                                                                      for r in rounds])),
               "load_average_1min": [r["load_average_1min"] for r in rounds],
               "median": {str(w): summarize(rounds, w) for w in a.workers},
               "rounds": [{str(k): v for k, v in r.items()} for r in rounds]}
        if a.breakdown:
            res["breakdown_cpu_seconds"] = breakdown(big, a.workers[0])
    finally:
        if base_root:
            remove_worktree(base_root)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\npreprocess_data.py, {res['input_mb']:.1f} MB jsonl ({res['tokens'] / 1e6:.2f}M tokens) on {cores} cores, "
          f"steady state, median of {a.runs} alternating rounds; limit = min(workers, cores) x "
          f"{res['limit_one_thread_tokens_per_sec'] / 1e6:.2f}M tokens/s (encode(list), 1 thread); the tokenizer "
          f"alone on {cores} threads got {res['tokenizer_all_cores_tokens_per_sec'] / 1e6:.2f}M tokens/s "
          f"({res['tokenizer_all_cores_tokens_per_sec'] / res['limit_one_thread_tokens_per_sec']:.2f}x one thread: "
          f"below {cores}x, the machine is shared)")
    print(f"{'workers':>8} {'ours Mtok/s':>12} {a.baseline + ' Mtok/s':>15} {'ratio':>6} {'fraction':>9} "
          f"{'(' + a.baseline + ')':>10} {'per core':>9} {'ratio/CPU-s':>12} {'fraction/CPU-s':>15} "
          f"{'of tokenizer now':>17} {'identical':>10}")
    for w in a.workers:
        m = res["median"][str(w)]
        print(f"{w:>8} {m['ours_tokens_per_sec'] / 1e6:>12.2f} {m['baseline_tokens_per_sec'] / 1e6:>15.2f} "
              f"{m['ratio']:>6.2f} {m['fraction_of_limit']:>9.2f} {m['baseline_fraction_of_limit']:>10.2f} "
              f"{m['per_core_tokens_per_sec'] / 1e6:>9.2f} {m['cpu_ratio']:>12.2f} {m['cpu_fraction_of_limit']:>15.2f} "
              f"{m['fraction_of_tokenizer_now']:>17.2f} {str(m['identical']):>10}")
    print("load average (1 min) per round: " + " ".join(f"{x:.1f}" for x in res["load_average_1min"]))
    if "breakdown_cpu_seconds" in res:
        bd = res["breakdown_cpu_seconds"]
        print(f"\nCPU seconds by part, in one process ({bd['tokens'] / 1e6:.2f}M tokens, "
              f"JSON parser {bd['json_parser']}):")
        for k, v in bd.items():
            if k not in ("json_parser", "tokens"):
                print(f"  {k:<52} {v:7.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
