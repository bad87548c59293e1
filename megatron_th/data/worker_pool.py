"""An ordered ``map`` over worker processes, for the preprocessing tools (preprocess.worker_map).

Like ``multiprocessing.Pool.imap``, the workers take tasks from one shared queue (a free worker
takes the next task, so a worker the OS delays holds up nothing but its own task) and results come
back on one queue, handed out in input order. Two differences, both for a small machine where the
reading-and-writing process shares the cores with the workers:

- Pool's worker-handler thread waits on the result pipe without reading it, so it spins while a
  result waits there (0.26 CPU-s of a 40 MB preprocessing run, more than reading and writing
  together). Here nothing waits on a pipe it does not read.
- Both pipes are enlarged (``F_SETPIPE_SZ``, up to 1 MiB where the OS allows), so a few tasks wait
  in the kernel for the next free worker and a worker's result does not wait for this process to
  be scheduled: a worker never idles because the main process is not running at that moment.

A feeder thread reads the tasks and keeps at most ``window`` of them out or waiting to be handed
out (memory stays bounded when one worker is slow); the calling thread only receives. A task that
raises, or the task iterator raising, raises in its turn in the caller; a worker that dies is a
RuntimeError.
"""
from __future__ import annotations

import fcntl
import multiprocessing as mp
import threading
from multiprocessing.connection import wait

_PIPE_BYTES = 1 << 20


def _grow(*conns) -> None:
    for c in conns:
        try:
            fcntl.fcntl(c.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size, or not a pipe: keep the default
            pass


def _serve(tasks, results, init, initarg) -> None:
    """A worker's loop: ``init(initarg)`` once, then ``(seq, func, task)`` -> ``(seq, ok, func(task)
    or the exception)`` until ``None``."""
    failed = None
    try:
        init(initarg)
    except BaseException as e:  # reported with every task, so the caller sees it in order
        failed = e
    while True:
        msg = tasks.get()
        if msg is None:
            return
        seq, func, task = msg
        if failed is not None:
            out = (seq, False, failed)
        else:
            try:
                out = (seq, True, func(task))
            except BaseException as e:
                out = (seq, False, e)
        results.put(out)


class WorkerPool:
    """``workers`` spawned processes, each set up once by ``init(initarg)``; ``imap(func, tasks)``
    (once per pool) yields ``func(task)`` for every task in input order. Use as a context manager:
    the workers stop at its end once every task was handed out, otherwise (an exception, a map left
    early) they are killed."""

    def __init__(self, workers: int, init, initarg, window: int | None = None):
        ctx = mp.get_context("spawn")
        self.window = window or 4 * workers
        self.tasks, self.results = ctx.SimpleQueue(), ctx.SimpleQueue()
        _grow(self.tasks._writer, self.results._writer)
        self.procs = [ctx.Process(target=_serve, args=(self.tasks, self.results, init, initarg), daemon=True)
                      for _ in range(workers)]
        for p in self.procs:
            p.start()
        self._used = self._stop = self._complete = False

    def imap(self, func, tasks):
        if self._used:
            raise RuntimeError("WorkerPool.imap runs once per pool")
        self._used = True
        slots = threading.Semaphore(self.window)
        done: dict[int, tuple] = {}
        total = []  # the number of tasks, once the feeder knows it
        lock = threading.Lock()

        def feed():
            seq = 0
            try:
                for task in tasks:
                    slots.acquire()
                    if self._stop:
                        return
                    self.tasks.put((seq, func, task))
                    seq += 1
            except BaseException as e:  # the task iterator failed: raised in its turn
                with lock:
                    done[seq] = (False, e)
                seq += 1
            total.append(seq)

        feeder = threading.Thread(target=feed, name="preprocess-feeder", daemon=True)
        feeder.start()
        handed = 0
        sentinels = [p.sentinel for p in self.procs]
        try:
            while True:
                with lock:
                    ready = done.pop(handed, None)
                if ready is not None:
                    handed += 1
                    slots.release()
                    ok, out = ready
                    if not ok:
                        raise out
                    yield out
                    continue
                if total and handed >= total[0]:
                    self._complete = True
                    return
                for obj in wait([self.results._reader, *sentinels], timeout=0.2):
                    if obj is self.results._reader:
                        seq, ok, out = self.results.get()
                        with lock:
                            done[seq] = (ok, out)
                    else:
                        i = sentinels.index(obj)
                        raise RuntimeError(f"preprocessing worker {i} died (exit code {self.procs[i].exitcode})")
        finally:
            self._stop = True
            for _ in range(self.window + 1):  # a feeder waiting for a slot wakes and sees the stop
                slots.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop = True
        kill = exc_type is not None or not self._complete  # tasks may be left: nothing waits for them
        if not kill:
            for _ in self.procs:
                self.tasks.put(None)
        for p in self.procs:
            if kill:
                p.terminate()
            p.join(timeout=None if kill else 30)
            if p.is_alive():
                p.terminate()
                p.join()
        self.tasks._reader.close()  # a feeder still blocked on a full pipe gets EPIPE and ends
        return False
