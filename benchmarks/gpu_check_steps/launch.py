"""The parent side of gpu_check: start a worker (or a torchrun launch), follow its events, enforce
every task's timeout, and turn deaths and hangs into FAIL results.

Each launch runs under the ``timeout`` command (coreutils; it signals the whole process group, so
torchrun's ranks go too) with the sum of its tasks' timeouts; the parent also ends the launch as
soon as the running task exceeds its own timeout (SIGTERM to the group, SIGKILL 10 s later). The
launch's stdout and stderr (training logs, faulthandler stacks of hung ranks) go to a log file in
the work directory, named in every FAIL detail. A task that failed or hung loses its unreported
results (FAIL); the remaining tasks start in a new launch (at most MAX_LAUNCHES per group).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

MAX_LAUNCHES = 3
POLL = 0.1


def _read_new(path: str, pos: int) -> tuple[list[dict], int]:
    """Complete JSON lines appended to ``path`` since byte ``pos``."""
    if not os.path.exists(path):
        return [], pos
    with open(path, "rb") as f:
        f.seek(pos)
        data = f.read()
    end = data.rfind(b"\n") + 1
    lines = [json.loads(x) for x in data[:end].splitlines() if x.strip()]
    return lines, pos + end


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the launch's process group, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error_line(log: str) -> str:
    """The last line of the log that looks like an exception (for FAIL details), else ''."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[-400:]
    except OSError:
        return ""
    for line in reversed(lines):
        s = line.strip()
        if s and (s.startswith(("error:", "RuntimeError", "torch.", "ValueError")) or "Error:" in s):
            return s[:300]
    return ""


class Launcher:
    """Runs groups of tasks; ``report(dict)`` receives every result (status, value, ...) in order."""

    def __init__(self, workdir: str, mode: str, timeouts: dict, startup: float, report, env: dict,
                 inject: dict, nproc: int | None):
        self.workdir, self.mode, self.timeouts, self.startup = workdir, mode, timeouts, startup
        self.report, self.env, self.inject, self.nproc = report, env, inject, nproc
        self.launches = 0

    def run_group(self, tasks: list[str], command, label: str) -> None:
        """Run ``tasks`` (names) with ``command(plan_path) -> argv``, relaunching after a failed task."""
        remaining = list(tasks)
        for attempt in range(1, MAX_LAUNCHES + 1):
            if not remaining:
                return
            finished, fatal = self._launch(remaining, command, f"{label}{attempt}")
            remaining = [t for t in remaining if t not in finished]
            if fatal:
                break
        for t in remaining:
            self.report({"step": t, "status": "FAIL", "value": None, "unit": "-",
                         "detail": f"not run: its launch failed {MAX_LAUNCHES} times (see the logs in {self.workdir})",
                         "seconds": 0.0})

    def _launch(self, tasks: list[str], command, tag: str) -> tuple[set, bool]:
        """One process (group). Returns (tasks finished or failed, whether to give up on the rest)."""
        self.launches += 1
        events, log, plan_path = (os.path.join(self.workdir, f"{tag}.{x}") for x in ("events", "log", "plan.json"))
        plan = {"mode": self.mode, "workdir": self.workdir, "tasks": tasks, "events": events,
                "timeouts": {t: self.timeouts[t] for t in tasks}, "inject": self.inject, "nproc": self.nproc}
        with open(plan_path, "w", encoding="utf-8") as f:
            json.dump(plan, f)
        argv = command(plan_path)
        budget = self.startup + sum(self.timeouts[t] for t in tasks) + 30
        if shutil.which("timeout"):
            argv = ["timeout", "-k", "10", str(int(budget)), *argv]
        with open(log, "w", encoding="utf-8") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        st = {"declared": {}, "reported": {}, "errors": {}, "finished": set(), "current": None, "started": False,
              "deadline": time.monotonic() + self.startup}

        def handle(ev: dict) -> None:
            kind, task = ev.pop("ev"), ev.pop("task", None)
            if kind == "begin":
                st["declared"][task] = ev["steps"]
                st["current"], st["started"] = task, True
                st["deadline"] = time.monotonic() + self.timeouts[task]
            elif kind == "result" and ev["step"] not in st["reported"].setdefault(task, set()):
                st["reported"][task].add(ev["step"])
                self.report(ev)
            elif kind == "end":
                st["finished"].add(task)
                st["current"], st["deadline"] = None, time.monotonic() + self.startup
            elif kind == "error":
                st["errors"].setdefault(task, f"rank {ev['rank']}: {ev['error']}")

        timed_out, pos = False, 0
        try:
            while True:
                new, pos = _read_new(events, pos)
                for ev in new:
                    handle(ev)
                rc = proc.poll()
                if rc is not None:
                    break
                if time.monotonic() > st["deadline"]:
                    timed_out = True
                    _kill(proc)
                    rc = proc.returncode
                    break
                time.sleep(POLL)
        except BaseException:  # Ctrl-C or a parent error: never leave ranks running
            _kill(proc)
            raise
        for ev in _read_new(events, pos)[0]:  # what arrived while it ended
            handle(ev)
        declared, reported, errors, finished, current = (st[k] for k in ("declared", "reported", "errors",
                                                                         "finished", "current"))
        started = st["started"]
        where = f"log {log}"
        if current is not None:  # died or hung inside a task: its missing results fail
            if timed_out:
                why = (f"timed out after {self.timeouts[current]:.0f} s (a hang: every rank's stack is in the "
                       f"{where})")
            else:
                why = errors.get(current) or _last_error_line(log) or f"the process exited with code {rc}"
                why += f" ({where})"
            for step in declared.get(current, [current]):
                if step not in reported.get(current, set()):
                    self.report({"step": step, "status": "FAIL", "value": None, "unit": "-", "detail": why,
                                 "seconds": 0.0})
            finished.add(current)
            return finished, False
        if not started and (rc != 0 or timed_out):  # never reached the first task: give up on the group
            why = ("timed out while starting" if timed_out else
                   (_last_error_line(log) or f"the launch exited with code {rc} before its first task"))
            for t in tasks:
                for step in declared.get(t, [t]):
                    self.report({"step": step, "status": "FAIL", "value": None, "unit": "-",
                                 "detail": f"{why} ({where})", "seconds": 0.0})
            return set(tasks), True
        if rc != 0 and set(tasks) <= finished:
            print(f"gpu_check: note: every task finished but the launch exited with code {rc} ({where})",
                  flush=True)
        return finished, False
