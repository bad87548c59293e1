"""One-step-ahead prefetch of global batches in a background thread.

``Prefetcher(loader)`` wraps any loader with ``next_global_batch()`` (data/loader.py
PretrainingLoader, FullPassLoader, a task's own): while the caller trains on global batch k, a
thread builds batch k+1 (dataset reads, packing metadata, collation) and, with a CUDA ``device``,
pins its model inputs and starts their host-to-device copies on a side stream, so the step finds
them on the device. On other devices only the host work moves off the critical path.

The batches, their order and ``consumed_samples`` (what a checkpoint records) are exactly the
wrapped loader's: ``consumed_samples`` counts the batches handed out, not the one being built,
so a run resumed from a checkpoint continues with the same batch (tests/test_prefetch.py).

``drop_keys``: keys removed from every micro-batch dict as it is built, e.g. ``tokens`` on
pipeline stages without the embedding and ``labels`` on those without the loss (the loop decides:
training/pretrain.py). The packing metadata (``position_ids``, ``cu_seqlens``, ``loss_mask``) is
built once per micro-batch by the loader and reaches every stage.

Threads: one worker, started with the first prefetch and ended (joined) when no further batch is
wanted: after the last of ``batches`` (what the run takes), when the loader is exhausted, after a
build failed, or by ``close()`` (also on leaving a ``with`` block, on any exit). It is kept
between batches because starting a thread per batch made the loop wait for the new thread to be
scheduled (``Thread.start`` blocks until it runs; milliseconds on a loaded machine). An exception
raised while building a batch is re-raised, the same object with its message and traceback, by
the call that asks for that batch.
"""
from __future__ import annotations

import queue
import threading

import torch

DEVICE_INPUTS = "device_inputs"
"""Key of a micro-batch's early device copies ``{key: device tensor}`` (CUDA only), read by
training/step.py model_inputs instead of copying those keys itself."""

MODEL_INPUT_KEYS = ("tokens", "position_ids", "labels")
"""The micro-batch tensors the model takes on the device (training/step.py model_inputs)."""


class Prefetcher:
    """``loader`` with batch k+1 built in the background while batch k is used.

    Args:
        loader: any object with ``next_global_batch() -> list[dict]``, ``has_next()`` and
            ``consumed_samples``; its other attributes (``rank_sample_ids``, ``source``, ...) are
            reached through this object. Only this object may call it from now on.
        batches: the most global batches to hand out (None: until ``loader.has_next()`` is False);
            none is built beyond.
        drop_keys: micro-batch keys to remove as batches are built.
        device: where the model runs; on CUDA the ``MODEL_INPUT_KEYS`` tensors are pinned and
            copied early (``DEVICE_INPUTS``); elsewhere nothing is copied.

    ``next_global_batch`` raises what the loader raised building that batch (StopIteration when
    exhausted, as the loader does).
    """

    def __init__(self, loader, batches: int | None = None, drop_keys=(), device=None):
        self.loader, self.batches = loader, batches
        self.drop_keys = frozenset(drop_keys)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.consumed_samples = loader.consumed_samples
        self._handed, self._pending = 0, False
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._thread, self._todo, self._done = None, None, queue.SimpleQueue()
        self._start()

    def __getattr__(self, name):  # rank_sample_ids, source, names, ... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _wanted(self) -> bool:
        return self.batches is None or self._handed + self._pending < self.batches

    def _start(self) -> None:
        """Have the worker build the next batch if one is wanted and the loader has it, else end
        the worker. Called only while no build runs: the loader is never used by two threads."""
        if not self._pending and self._wanted() and self.loader.has_next():
            if self._thread is None:  # a fresh request queue per worker: nothing stale reaches it
                self._todo = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._work, args=(self._todo,), name="megatron_th-prefetch",
                                                daemon=True)
                self._thread.start()
            self._pending = True
            self._todo.put(True)
        elif not self._pending:
            self._stop()

    def _stop(self) -> None:
        if self._thread is not None:
            self._todo.put(False)
            self._thread.join()
            self._thread = None

    def _work(self, todo) -> None:
        """The worker: one batch per request until asked to stop; ends after a failed build."""
        while todo.get():
            try:
                self._done.put((self._build(), None))
            except BaseException as e:  # handed to the caller of next_global_batch
                self._done.put((None, e))
                return

    def _build(self):
        """(micro-batches, the loader's consumed_samples after them, CUDA event or None)."""
        micro = self.loader.next_global_batch()
        consumed = self.loader.consumed_samples
        if self.drop_keys:
            micro = [{k: v for k, v in mb.items() if k not in self.drop_keys} for mb in micro]
        event = None
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                for mb in micro:
                    mb[DEVICE_INPUTS] = {k: mb[k].pin_memory().to(self.device, non_blocking=True)
                                         for k in MODEL_INPUT_KEYS if isinstance(mb.get(k), torch.Tensor)}
                event = torch.cuda.Event()
                event.record(self._stream)
        return micro, consumed, event

    def has_next(self) -> bool:
        return self._pending or (self._wanted() and self.loader.has_next())

    def next_global_batch(self) -> list[dict]:
        """The next global batch's micro-batches for this rank (the loader's, minus
        ``drop_keys``); starts building the one after."""
        if not self._pending:  # nothing prefetched (exhausted, limit reached, or after an error)
            micro, consumed, event = self._build()
        else:
            result, error = self._done.get()
            self._pending = False
            if error is not None:
                self._thread.join()  # it ended after the failure
                self._thread = None
                raise error
            micro, consumed, event = result
        self._handed += 1
        self.consumed_samples = consumed
        if event is not None:  # the step's stream waits for the copies; the allocator learns who uses them
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for mb in micro:
                for t in mb[DEVICE_INPUTS].values():
                    t.record_stream(stream)
        self._start()
        return micro

    def __iter__(self):
        while self.has_next():
            yield self.next_global_batch()

    def close(self) -> None:
        """Let a build in progress finish (its result or error is dropped) and end the worker."""
        if self._pending:
            self._done.get()
            self._pending = False
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
