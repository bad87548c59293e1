#!/usr/bin/env python
"""Where a command's wall time goes, process by process: on a CPU, waiting for one, or blocked.

Runs a command and polls, every ``interval`` seconds, the Linux scheduler's per-thread counters of
every process in its tree (``/proc/PID/task/TID/schedstat``: nanoseconds on a CPU, nanoseconds
runnable but waiting on a run queue; Documentation/scheduler/sched-stats.rst) and each process's
CPU time (``/proc/PID/stat`` utime + stime, which include threads that have already exited). Per
process it reports:

- ``cpu``: CPU seconds of the whole process (all its threads);
- per thread seen: lifetime (first to last poll that saw it), ``on_cpu``, ``run_queue`` (ready to
  run, but the CPU was given to another task: on a shared machine, the other sessions), and
  ``blocked`` = lifetime - on_cpu - run_queue (waiting on a pipe, a lock, a child, the disk).

A thread that lives less than ``interval`` may be missed, and a thread's last ``interval`` is not
counted; ``cpu`` has neither error (clock-tick resolution). Linux only (raises OSError elsewhere).
``python benchmarks/schedstat_profile.py -- CMD ...`` prints the table for any command.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:  # exited meanwhile
            pass
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def profile(cmd: list[str], interval: float = 0.02, name=None, **popen) -> dict:
    """Run ``cmd`` (``subprocess.Popen(cmd, **popen)``) to completion and return ``{"wall", "returncode",
    "processes": [{"pid", "name", "cpu", "threads": [{"tid", "life", "on_cpu", "run_queue",
    "blocked"}]}]}`` (seconds; ``name(cmdline) -> str`` labels a process, default its cmdline).
    stdout/stderr go where ``popen`` says."""
    if not os.path.exists("/proc/self/schedstat"):
        raise OSError("schedstat_profile needs Linux /proc/PID/schedstat")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    procs: dict[int, dict] = {}
    while True:
        # exited, not yet reaped: its /proc/PID/stat still holds its final CPU time
        done = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        now = time.perf_counter()
        for pid in _tree(proc.pid):
            try:
                stat = _read(f"/proc/{pid}/stat")
                p = procs.setdefault(pid, {"pid": pid, "threads": {}})
                # read every time: a child seen between fork and exec still shows its parent's
                p["cmdline"] = _read(f"/proc/{pid}/cmdline").replace("\0", " ") or p.get("cmdline", "")  # zombie: ""
                fields = stat[stat.rindex(")") + 2:].split()
                p["cpu"] = (int(fields[11]) + int(fields[12])) / _TICK
                for tid in os.listdir(f"/proc/{pid}/task"):
                    run, wait, _ = map(int, _read(f"/proc/{pid}/task/{tid}/schedstat").split())
                    th = p["threads"].setdefault(int(tid), {"tid": int(tid), "first": now})
                    th.update(last=now, on_cpu=run / 1e9, run_queue=wait / 1e9)
            except (OSError, ValueError):  # the process or thread exited between two reads
                continue
        if done:
            break
        time.sleep(interval)
    proc.wait()
    wall = time.perf_counter() - t0
    out = []
    for p in procs.values():
        threads = []
        for th in p["threads"].values():
            life = th["last"] - th["first"] + interval / 2
            threads.append({"tid": th["tid"], "life": life, "on_cpu": th["on_cpu"], "run_queue": th["run_queue"],
                            "blocked": max(0.0, life - th["on_cpu"] - th["run_queue"])})
        out.append({"pid": p["pid"], "name": name(p["cmdline"]) if name else p["cmdline"][:80],
                    "cpu": p.get("cpu", 0.0), "threads": threads})
    return {"wall": wall, "returncode": proc.returncode, "processes": out}


def summarize(prof: dict) -> list[dict]:
    """Per process: ``cpu``, and its main thread's and its other threads' (summed) on_cpu,
    run_queue and blocked seconds, with the main thread's lifetime."""
    rows = []
    for p in prof["processes"]:
        main = next((t for t in p["threads"] if t["tid"] == p["pid"]), None)
        rest = [t for t in p["threads"] if t is not main]
        s = lambda ts, k: sum(t[k] for t in ts)  # noqa: E731
        rows.append({"name": p["name"], "pid": p["pid"], "cpu": p["cpu"],
                     "life": main["life"] if main else 0.0,
                     "main_on_cpu": main["on_cpu"] if main else 0.0,
                     "main_run_queue": main["run_queue"] if main else 0.0,
                     "main_blocked": main["blocked"] if main else 0.0,
                     "other_threads": len(rest), "other_on_cpu": s(rest, "on_cpu"),
                     "other_run_queue": s(rest, "run_queue")})
    return rows


def print_table(prof: dict, title: str = "") -> None:
    print(f"{title}wall {prof['wall']:.2f}s; seconds per process (main thread: on a CPU / waiting for one / "
          f"blocked; other threads: on a CPU / waiting for one)")
    for r in summarize(prof):
        print(f"  {r['name'][:40]:<40} cpu {r['cpu']:6.2f}  main {r['main_on_cpu']:6.2f} / {r['main_run_queue']:6.2f}"
              f" / {r['main_blocked']:6.2f} of {r['life']:6.2f}   {r['other_threads']:3d} other threads "
              f"{r['other_on_cpu']:6.2f} / {r['other_run_queue']:6.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command")
    prof = profile(cmd, a.interval)
    print_table(prof)
    return prof["returncode"]


if __name__ == "__main__":
    sys.exit(main())
