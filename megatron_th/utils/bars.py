"""Progress bars for long jobs (preprocessing, conversion): tqdm, and plain lines off a terminal.

On a terminal, and in a Jupyter notebook, ``progress_bar`` returns an ordinary tqdm bar on stderr.
When stderr is a file or a pipe (a log, CI, a batch job), tqdm would still redraw with ``\\r``,
which leaves one endless line in the log (tqdm issue #750, open: tqdm has no line mode). There the
bar is a ``LineBar``: the same statistics as a complete line, at most one every ``LOG_INTERVAL``
seconds, and nothing at all for a job shorter than that. It overrides ``tqdm.display``, the hook
tqdm documents for subclasses (tqdm/std.py, ``tqdm.display``); tqdm keeps doing the counting,
rates, ETA, unit scaling and throttling.

Messages printed while a bar is open should go through ``write`` (``tqdm.write``), which lifts the
terminal bar out of the way and redraws it after the message.
"""
from __future__ import annotations

import sys

from tqdm import tqdm
from tqdm.autonotebook import tqdm as _notebook_or_std

__all__ = ["LOG_INTERVAL", "LineBar", "progress_bar", "write", "format_sizeof"]

LOG_INTERVAL = 10.0
"""Seconds between two lines of a ``LineBar``, and before its first one."""

LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

format_sizeof = tqdm.format_sizeof  # 1234567 -> "1.23M" (SI prefixes; tqdm/std.py)


class LineBar(tqdm):
    """A tqdm bar that writes its refreshes as complete lines, with no ``\\r`` and no bar.

    Same arguments as ``tqdm``; ``mininterval`` and ``delay`` default to ``LOG_INTERVAL``
    (seconds), ``miniters`` to 1, ``bar_format`` to ``LINE_FORMAT``. Count with ``update``: a line is written when
    tqdm's own throttling refreshes from ``update``, never for the redraws that follow
    ``tqdm.write`` (nothing was cleared). ``close`` writes a last line only if an earlier line was
    written, so a job shorter than ``delay`` leaves no progress output at all.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("delay", kwargs["mininterval"])
        kwargs.setdefault("miniters", 1)  # lines by time alone, not tqdm's adaptive count per refresh
        kwargs.setdefault("bar_format", LINE_FORMAT)
        kwargs["leave"] = False  # close() writes the last line itself, without tqdm's clearing
        self._lines, self._updating = 0, False
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        self._updating = True
        try:
            return super().update(n)
        finally:
            self._updating = False

    def display(self, msg=None, pos=None):
        if not self._updating or msg == "":
            return False
        self._write_line()
        return True

    def _write_line(self):
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._lines += 1

    def clear(self, nolock=False):
        pass

    def close(self):
        if not self.disable and self._lines and self.last_print_n != self.n:
            self._write_line()
        super().close()


def progress_bar(total: float | None, desc: str, unit: str = "it", disable: bool = False, **kwargs) -> tqdm:
    """A progress bar on ``sys.stderr`` counting ``total`` ``unit``s; use as a context manager.

    A terminal (``sys.stderr.isatty()``) gets a tqdm bar, a notebook tqdm's widget, anything
    else a ``LineBar``. ``disable=True`` returns a bar that prints nothing. Extra keyword
    arguments go to tqdm (e.g. ``unit_scale=True`` for bytes).
    """
    kwargs.update(total=total, desc=desc, unit=unit, disable=disable)
    if disable:
        return tqdm(**kwargs)
    if _notebook_or_std is not tqdm:  # tqdm.autonotebook found a Jupyter kernel
        return _notebook_or_std(**kwargs)
    stream = sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    return LineBar(file=stream, **kwargs)


def write(msg: str, file=None) -> None:
    """Prints ``msg`` (to ``file``, default stdout) without breaking an open terminal bar."""
    tqdm.write(msg, file=file)
