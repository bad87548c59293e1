"""A dependency-free progress line for long jobs: a bar on a terminal, periodic lines in logs."""
from __future__ import annotations

import sys
import time


def human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


class Progress:
    """``update(done, **counters)``; redraws at most every ``interval`` seconds.

    On a TTY it redraws one line with a bar; otherwise it prints a plain line every
    ``log_interval`` seconds so CI logs and files stay readable.
    """

    def __init__(self, total: float, what: str = "", stream=None, interval=0.2, log_interval=10.0,
                 enabled=True):
        self.total, self.what = max(total, 1), what
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.enabled = enabled
        self.start = self._last = time.monotonic()

    def update(self, done: float, force: bool = False, **counters) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        elapsed = now - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0
        extra = " ".join(f"{k} {human(v)}" for k, v in counters.items())
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.what} [{bar:<30}] {frac:6.1%} {extra} eta {eta:4.0f}s")
        else:
            self.stream.write(f"{self.what} {frac:6.1%} {extra} elapsed {elapsed:.0f}s eta {eta:.0f}s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
