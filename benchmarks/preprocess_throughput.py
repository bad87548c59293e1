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
``SentencePieceProcessor.encode(list)`` (``num_threads=1``) in this process, nothing else (JSON,
files, processes), on the texts of the small input (the same documents: both inputs repeat the
corpus). It is measured right before and right after each side's pair of runs (the geometric mean
of the two is that side's limit), so the machine's load at the moment weighs on both. Next to it,
the tokenizer alone on min(workers, cores) threads (``num_threads``), measured at the same moments:
on a quiet machine about cores x one thread; on a shared one it shows how much of the machine this
session could get at all (Linux's autogroup gives each session an equal share of the CPUs, so a
second thread may add little), and "of tokenizer now" is our rate over it. Per core: the steady
rate / min(workers, cores), and tokens per CPU-second (what one core gives when it is ours: the
figure to size a bigger node with, e.g. 64 workers on 64 cores, as long as the one reading and
writing process keeps up).

Every round runs both sides (order alternating: ours first in even rounds); ratios are per round
and the medians over ``--runs`` rounds (>= 5) are reported, with the 1-minute load average at each
round. Outputs of the two sides are compared byte for byte in every round. ``--breakdown`` (default
on) also times, in this process on the big input, the parts of a worker's task (parsing, encoding,
deciding and packing the buffers) and the main process's share (cutting the input into blocks,
appending buffers to the dataset), against the encode-only limit. ``--profile`` (default on) runs
each side ``--profile-runs`` (3) more times on both inputs, with the first ``--workers`` (2), under
benchmarks/schedstat_profile.py: per process, CPU seconds and how each thread's lifetime splits
into on a CPU / waiting for a CPU (runnable, but the machine ran another task) / blocked (waiting on
a pipe, a thread or a child); the medians of big - those of small give the steady state.
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


def limits(sp, texts: list[str], threads: int) -> dict:
    """The tokenizer alone right now: ``one`` = 1 thread, ``all`` = ``threads`` threads (``limit_rate``)."""
    one = limit_rate(sp, texts)
    return {"one": one, "all": limit_rate(sp, texts, threads) if threads > 1 else one,
            "load_average_1min": os.getloadavg()[0]}


def gmean(a: float, b: float) -> float:
    return float(np.sqrt(a * b))


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


def summarize(rounds: list[dict], w: int, cores: int) -> dict:
    """Medians over rounds of the rows for ``w`` workers."""
    rows = [r[w] for r in rounds]
    med = lambda f: float(np.median([f(x) for x in rows]))  # noqa: E731
    ours = med(lambda x: x["ours"]["tokens_per_sec"])
    return {"workers": w, "ours_tokens_per_sec": ours,
            "baseline_tokens_per_sec": med(lambda x: x["baseline"]["tokens_per_sec"]),
            "ratio": med(lambda x: x["ratio"]), "ratio_min_max": [min(x["ratio"] for x in rows),
                                                                  max(x["ratio"] for x in rows)],
            "fraction_of_limit": med(lambda x: x["fraction_of_limit"]),
            "baseline_fraction_of_limit": med(lambda x: x["baseline_fraction_of_limit"]),
            "limit_one_thread_tokens_per_sec": med(lambda x: x["ours"]["limit_one_thread"]),
            "per_core_tokens_per_sec": ours / min(w, cores),
            "ours_tokens_per_cpu_sec": med(lambda x: x["ours"]["tokens_per_cpu_sec"]),
            "cpu_ratio": med(lambda x: x["cpu_ratio"]),
            "cpu_fraction_of_limit": med(lambda x: x["cpu_fraction_of_limit"]),
            "fraction_of_tokenizer_now": med(lambda x: x["fraction_of_tokenizer_now"]),
            "tokenizer_threads_over_one": med(lambda x: x["tokenizer_threads_over_one"]),
            "identical": all(x["identical"] for x in rows)}


def _role(cmdline: str) -> str:
    return ("worker" if "spawn_main" in cmdline or "multiprocessing-fork" in cmdline
            else "resource tracker" if "resource_tracker" in cmdline else "main")


def profile_side(root: str, src: str, prefix: str, workers: int) -> dict:
    """One run of checkout ``root``'s tool under schedstat_profile: per role (main, worker,
    resource tracker; workers summed): CPU seconds, the main thread's on-CPU / run-queue / blocked
    seconds, the other threads' on-CPU and run-queue seconds, and the wall time."""
    from schedstat_profile import profile, summarize as per_process

    argv = ["--input", src, "--tokenizer-model", DEFAULT_TOKENIZER, "--output-prefix", prefix, "--append-eod",
            "--workers", str(workers), "--quiet"]
    prof = profile([sys.executable, "-c", RUN, root, *argv], name=_role, cwd=root, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    if prof["returncode"] != 0:
        raise RuntimeError(f"{root}: preprocess failed under the profiler")
    roles: dict = {}
    for r in per_process(prof):
        acc = roles.setdefault(r["name"], {"processes": 0})
        acc["processes"] += 1
        for k in ("cpu", "life", "main_on_cpu", "main_run_queue", "main_blocked", "other_threads", "other_on_cpu",
                  "other_run_queue"):
            acc[k] = acc.get(k, 0) + r[k]
    return {"wall": prof["wall"], "roles": roles}


def profile_both(sides: dict, big: str, small: str, tmp: str, workers: int, runs: int) -> dict:
    """``profile_side`` of each side on both inputs, ``runs`` times (sides alternating), the median of
    every figure, and the big - small difference of the medians (the steady state)."""
    got: dict = {name: {"big": [], "small": []} for name in sides}
    for r in range(runs):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            for run, src in (("small", small), ("big", big)):
                got[name][run].append(profile_side(sides[name], src, os.path.join(tmp, f"prof_{name}_{run}"), workers))

    def median(profs: list) -> dict:
        roles = {role: {k: float(np.median([p["roles"].get(role, {}).get(k, 0) for p in profs])) for k in acc}
                 for role, acc in profs[0]["roles"].items()}
        return {"wall": float(np.median([p["wall"] for p in profs])), "roles": roles}

    out = {}
    for name in sides:
        b, s = median(got[name]["big"]), median(got[name]["small"])
        diff = {role: {k: v - s["roles"].get(role, {}).get(k, 0) for k, v in acc.items()}
                for role, acc in b["roles"].items()}
        out[name] = {"big": b, "small": s, "steady": {"wall": b["wall"] - s["wall"], "roles": diff}, "runs": runs}
    return out


def print_profile(prof: dict, tokens: int) -> None:
    print(f"\nwhere the time goes ({tokens / 1e6:.2f}M tokens, and minus the small input's; medians of "
          f"{next(iter(prof.values()))['runs']} runs; seconds, summed over "
          f"processes of a role): CPU; main thread on a CPU / waiting for a CPU / blocked; other threads "
          f"(the tokenizer's batch threads in a worker) on a CPU / waiting for a CPU")
    for name, p in prof.items():
        for run in ("big", "steady"):
            r = p[run]
            print(f"  {name:<8} {run:<6} wall {r['wall']:6.2f}")
            for role, x in r["roles"].items():
                print(f"    {role:<17} cpu {x['cpu']:6.2f}   main {x['main_on_cpu']:6.2f} / {x['main_run_queue']:6.2f} "
                      f"/ {x['main_blocked']:6.2f}   other {x['other_on_cpu']:6.2f} / {x['other_run_queue']:6.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-mb", type=float, default=40.0)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 1],
                   help="worker counts to measure (2: the issue's row; 1: one core, which a busy shared machine "
                        "disturbs least)")
    p.add_argument("--runs", type=int, default=5, help="alternating rounds (median reported)")
    p.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-process profile (benchmarks/schedstat_profile.py; Linux only)")
    p.add_argument("--profile-runs", type=int, default=3, help="profiled runs per side and input (median reported)")
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
        sub = texts_of(small)  # the limit's texts: the same documents as the big input, 1/8 as many
        base_root = make_worktree(tmp, a.baseline)
        sides = {"ours": ROOT, "baseline": base_root}
        rounds = []
        for r in range(a.runs):
            row: dict = {"load_average_1min": os.getloadavg()[0]}
            for w in a.workers:
                threads = min(w, cores)
                cell: dict = {}
                lim = [limits(sp, sub, threads)]  # before the first side, then after each side
                for name in (("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")):
                    prefix = os.path.join(tmp, f"{name}{w}")
                    s = run_tool(sides[name], small, prefix + "_small", w)
                    b = run_tool(sides[name], big, prefix, w)
                    lim.append(limits(sp, sub, threads))
                    cell[name] = steady(b, s)
                    one = gmean(lim[-2]["one"]["tokens_per_sec"], lim[-1]["one"]["tokens_per_sec"])
                    alone = gmean(lim[-2]["all"]["tokens_per_sec"], lim[-1]["all"]["tokens_per_sec"])
                    cell[name].update(limit=threads * one, limit_one_thread=one, tokenizer_alone=alone,
                                      fraction_of_limit=cell[name]["tokens_per_sec"] / (threads * one),
                                      fraction_of_tokenizer_now=cell[name]["tokens_per_sec"] / alone,
                                      limit_tokens_per_cpu_sec=gmean(lim[-2]["one"]["tokens_per_cpu_sec"],
                                                                     lim[-1]["one"]["tokens_per_cpu_sec"]))
                cell["limits"] = lim
                cell["identical"] = same_output(os.path.join(tmp, f"ours{w}"), os.path.join(tmp, f"baseline{w}"))
                o, bl = cell["ours"], cell["baseline"]
                cell["ratio"] = o["tokens_per_sec"] / bl["tokens_per_sec"]
                cell["fraction_of_limit"] = o["fraction_of_limit"]
                cell["baseline_fraction_of_limit"] = bl["fraction_of_limit"]
                cell["cpu_ratio"] = o["tokens_per_cpu_sec"] / bl["tokens_per_cpu_sec"]
                cell["cpu_fraction_of_limit"] = o["tokens_per_cpu_sec"] / o["limit_tokens_per_cpu_sec"]
                cell["fraction_of_tokenizer_now"] = o["fraction_of_tokenizer_now"]
                cell["tokenizer_threads_over_one"] = o["tokenizer_alone"] / o["limit_one_thread"]
                row[w] = cell
                print(f"round {r + 1}/{a.runs} (load {lim[0]['load_average_1min']:.1f}-"
                      f"{lim[-1]['load_average_1min']:.1f}), {w} worker(s): ours {o['tokens_per_sec'] / 1e6:.2f}M "
                      f"tok/s, {a.baseline} {bl['tokens_per_sec'] / 1e6:.2f}M, ratio {cell['ratio']:.2f}, limit "
                      f"{threads} x {o['limit_one_thread'] / 1e6:.2f}M, fraction {cell['fraction_of_limit']:.2f} "
                      f"({a.baseline} {cell['baseline_fraction_of_limit']:.2f}); tokenizer alone on {threads} "
                      f"thread(s) {o['tokenizer_alone'] / 1e6:.2f}M; identical {cell['identical']}", flush=True)
            rounds.append(row)
        res = {"input_mb": size / 1e6, "tokens": rounds[0][a.workers[0]]["ours"]["big"]["tokens"], "cores": cores,
               "baseline": a.baseline, "runs": a.runs,
               "load_average_1min": [r["load_average_1min"] for r in rounds],
               "median": {str(w): summarize(rounds, w, cores) for w in a.workers},
               "rounds": [{str(k): v for k, v in r.items()} for r in rounds]}
        if a.breakdown:
            res["breakdown_cpu_seconds"] = breakdown(big, a.workers[0])
        if a.profile:
            res["profile"] = profile_both(sides, big, small, tmp, a.workers[0], a.profile_runs)
    finally:
        if base_root:
            remove_worktree(base_root)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\npreprocess_data.py, {res['input_mb']:.1f} MB jsonl ({res['tokens'] / 1e6:.2f}M tokens) on {cores} cores, "
          f"steady state, median of {a.runs} alternating rounds; limit = min(workers, cores) x encode(list) on 1 "
          f"thread, measured before and after each side's runs")
    print(f"{'workers':>8} {'ours Mtok/s':>12} {a.baseline + ' Mtok/s':>15} {'ratio':>6} {'(min-max)':>11} "
          f"{'limit 1 thr':>12} {'fraction':>9} {'(' + a.baseline + ')':>10} {'per core':>9} {'Mtok/CPU-s':>11} "
          f"{'ratio/CPU-s':>12} {'fraction/CPU-s':>15} {'tok alone N thr/1':>18} {'of tokenizer now':>17} "
          f"{'identical':>10}")
    for w in a.workers:
        m = res["median"][str(w)]
        lo, hi = m["ratio_min_max"]
        print(f"{w:>8} {m['ours_tokens_per_sec'] / 1e6:>12.2f} {m['baseline_tokens_per_sec'] / 1e6:>15.2f} "
              f"{m['ratio']:>6.2f} {f'{lo:.2f}-{hi:.2f}':>11} {m['limit_one_thread_tokens_per_sec'] / 1e6:>12.2f} "
              f"{m['fraction_of_limit']:>9.2f} {m['baseline_fraction_of_limit']:>10.2f} "
              f"{m['per_core_tokens_per_sec'] / 1e6:>9.2f} {m['ours_tokens_per_cpu_sec'] / 1e6:>11.2f} "
              f"{m['cpu_ratio']:>12.2f} {m['cpu_fraction_of_limit']:>15.2f} {m['tokenizer_threads_over_one']:>18.2f} "
              f"{m['fraction_of_tokenizer_now']:>17.2f} {str(m['identical']):>10}")
    print("load average (1 min) per round: " + " ".join(f"{x:.1f}" for x in res["load_average_1min"]))
    if "breakdown_cpu_seconds" in res:
        bd = res["breakdown_cpu_seconds"]
        print(f"\nCPU seconds by part, in one process ({bd['tokens'] / 1e6:.2f}M tokens, "
              f"JSON parser {bd['json_parser']}):")
        for k, v in bd.items():
            if k not in ("json_parser", "tokens"):
                print(f"  {k:<52} {v:7.2f}")
    if "profile" in res:
        print_profile(res["profile"], res["tokens"])
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
