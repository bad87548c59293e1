"""Which tensors a block of code allocates, op by op: ``record_allocations``.

A ``TorchDispatchMode`` sees every aten op run on the current thread while it is active (including
the c10d collectives, which are dispatcher ops too: torch's own ``CommDebugMode`` counts them the
same way; torch/utils/_python_dispatch.py, torch/distributed/tensor/debug/_comm_mode.py). After
each op, an output whose storage is not the storage of one of the op's tensor inputs is a new
allocation (``empty``/``zeros``/``clone``/``_to_copy``/matmul outputs); views, in-place and
``out=`` ops return an input's storage and are not counted. Counting by allocation, not by RSS or
``torch.cuda.max_memory_allocated``, works the same on CPU, CUDA and the ``meta`` device, and names
the op that made each spike (design.md section 9: "memory spikes counted by allocation").

Not seen: allocations made outside the dispatcher (the caching allocator's own blocks, NCCL/gloo
internal buffers, NumPy or safetensors byte buffers) and ops run on other threads.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Allocation:
    """One new storage: ``nbytes`` (bytes of the storage, int), ``device`` (torch.device), ``op``
    (the aten overload's name, e.g. ``"aten.zeros.default"``), ``shape`` and ``dtype`` of the
    tensor the op returned."""
    nbytes: int
    device: torch.device
    op: str
    shape: tuple
    dtype: torch.dtype


def _storage_key(t: torch.Tensor):
    """Identity of the tensor's storage (its StorageImpl address; valid on meta too)."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, TypeError):  # no plain storage (a subclass)
        return None


def _matches(device: torch.device | None, d: torch.device) -> bool:
    if device is None:
        return True
    return d.type == device.type and (device.index is None or d.index == device.index)


class record_allocations(TorchDispatchMode):  # noqa: N801 (used as a context manager, like a function)
    """Context manager recording every tensor allocated by an op inside the block.

    ``device``: None records every device; else only allocations on that device (``"cuda"``
    matches any CUDA device, ``"cuda:1"`` only that one).
    After (or during) the block: ``.records`` (list of Allocation, in op order), ``.max_bytes``
    (largest single allocation in bytes, 0 if none), ``.total_bytes`` (sum; allocations freed in
    between still count), and ``.largest()`` (the Allocation of ``max_bytes``, or None).

        with record_allocations("cuda") as rec:
            save_state(...)
        assert rec.max_bytes <= bucket_bytes, rec.largest()

    Thread-local: ops run by other threads (an async checkpoint writer) are not recorded.
    """

    def __init__(self, device=None):
        super().__init__()
        self.device = torch.device(device) if device is not None else None
        self.records: list[Allocation] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        seen = set()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None or key in inputs or key in seen:
                continue
            seen.add(key)
            if _matches(self.device, t.device):
                self.records.append(Allocation(t.untyped_storage().nbytes(), t.device, str(func),
                                               tuple(t.shape), t.dtype))
        return out

    @property
    def max_bytes(self) -> int:
        return max((r.nbytes for r in self.records), default=0)

    @property
    def total_bytes(self) -> int:
        return sum(r.nbytes for r in self.records)

    def largest(self) -> Allocation | None:
        return max(self.records, key=lambda r: r.nbytes, default=None)


class record_live_bytes(record_allocations):  # noqa: N801 (a context manager, like its base)
    """``record_allocations`` that also follows each new storage until it is freed.

    ``.live_bytes``: bytes allocated inside the block and still alive; ``.peak_bytes``: the
    high-water mark of ``live_bytes`` (int bytes). A storage's bytes are released when its last
    tensor goes (a weak reference on the storage, which torch keeps while any tensor views it).
    Same scope as the base: dispatcher ops on this thread, one device or all.
    """

    def __init__(self, device=None):
        super().__init__(device)
        self.live_bytes = 0
        self.peak_bytes = 0

    def _free(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = len(self.records)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.records) == before:
            return out
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or not _matches(self.device, t.device):
                continue
            key = _storage_key(t)
            if key is None or key in inputs:
                continue
            inputs.add(key)
            storage = t.untyped_storage()
            nbytes = storage.nbytes()
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._free, nbytes)
        return out
