"""Count host-device synchronisations, and attribute them to regions such as transformer layers.

    with count_host_syncs(regions=model.layers.values()) as c:
        loss = model(**inputs).sum(); loss.backward()
    c.count, c.inside, c.by_kind, c.events

What is counted (each call is one event, on any device, so that a CPU run counts the same calls a
GPU run would sync on):
- ``_local_scalar_dense``: the ATen op behind ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``
  and ``if t:`` (aten/src/ATen/native/Scalar.cpp), seen by a ``TorchDispatchMode``;
- ``tolist``: ``Tensor.tolist`` is implemented in C++ (torch/csrc/utils/tensor_list.cpp) without
  going through the dispatcher, so ``torch.Tensor.tolist`` is wrapped while the context is open;
- on non-CPU tensors only (they are free on CPU): ``copy_d2h`` (a copy to the host:
  ``.cpu()``, ``.numpy()`` after it, ``.to("cpu")``), ``copy_h2d_blocking`` (a host-to-device copy
  without ``non_blocking=True``, which synchronises the stream: aten/src/ATen/native/cuda/Copy.cu)
  and ``data_dependent_shape`` (``nonzero``, ``masked_select``, ``unique``...: the output size is
  read back from the device).

Regions: ``regions`` are nn.Modules (or a name -> module mapping). A call made while one of them
runs its forward (forward pre/post hooks, so recomputation under activation checkpointing counts
too) or its backward (from the moment the gradient of its outputs is complete to the moment the
gradient of its inputs is: tensor hooks) is "inside"; ``c.inside`` counts those and each event
names its region. A module none of whose inputs requires grad has no backward region.

Higher-order operators (flex_attention run eagerly, ...) pass through uncounted: the ops they run
inside are not seen. torch.compile: the mode says ``ignore_compile_internals()`` (torch >= 2.9), so compiled functions
stay compiled under the counter and it sees only what runs outside compiled graphs; older torch
runs compiled functions eagerly while a dispatch mode is active.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "SyncEvent", "count_host_syncs"]

_DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                   "unique_consecutive", "repeat_interleave", "bincount", "histc"}


@dataclasses.dataclass(frozen=True)
class SyncEvent:
    """One counted call: its kind, the device of the tensor read, the innermost active region
    (None outside every region) and the first caller frame outside torch ("file:line")."""
    kind: str
    device: str
    region: str | None
    where: str


_THIS_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _caller() -> str:
    for frame in reversed(traceback.extract_stack(limit=60)):
        name = os.path.abspath(frame.filename)
        if name != _THIS_FILE and not name.startswith(_TORCH_DIR):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


class HostSyncCounter:
    """Result of ``count_host_syncs``: ``count`` (all events), ``inside`` (events inside a region),
    ``by_kind`` (Counter kind -> n), ``by_region`` (Counter region -> n, None = outside),
    ``events`` (list of SyncEvent, in order), ``region`` (the region running now)."""

    def __init__(self):
        self.events: list[SyncEvent] = []
        self._stack: list[str] = []  # active regions, innermost last

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def inside(self) -> int:
        return sum(e.region is not None for e in self.events)

    @property
    def region(self) -> str | None:
        """The innermost region running right now (None outside every region)."""
        return self._stack[-1] if self._stack else None

    @property
    def by_kind(self) -> collections.Counter:
        return collections.Counter(e.kind for e in self.events)

    @property
    def by_region(self) -> collections.Counter:
        return collections.Counter(e.region for e in self.events)

    def record(self, kind: str, device) -> None:
        self.events.append(SyncEvent(kind, str(device), self.region, _caller()))

    def enter(self, name: str) -> None:
        self._stack.append(name)

    def leave(self, name: str) -> None:
        # remove the innermost occurrence (hooks of nested regions close in reverse order)
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i] == name:
                del self._stack[i]
                return

    def __repr__(self) -> str:
        return f"HostSyncCounter(count={self.count}, inside={self.inside}, by_kind={dict(self.by_kind)})"


def _device_of(x):
    return x.device if isinstance(x, torch.Tensor) else None


class _SyncMode(TorchDispatchMode):
    supports_higher_order_operators = True  # passed through (e.g. flex_attention run eagerly)

    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not isinstance(func, torch._ops.OpOverload):  # a higher-order operator: not looked into
            return func(*args, **kwargs)
        name = func.overloadpacket.__name__
        first = args[0] if args else None
        if name == "_local_scalar_dense":
            self.counter.record("_local_scalar_dense", _device_of(first))
        elif isinstance(first, torch.Tensor) and first.device.type not in ("cpu", "meta"):
            if name in _DATA_DEPENDENT:
                self.counter.record("data_dependent_shape", first.device)
            elif name == "_to_copy" and torch.device(kwargs.get("device") or first.device).type == "cpu":
                self.counter.record("copy_d2h", first.device)
        if name == "_to_copy" and isinstance(first, torch.Tensor) and first.device.type == "cpu":
            dst = kwargs.get("device")
            if dst is not None and torch.device(dst).type not in ("cpu", "meta") and not kwargs.get("non_blocking"):
                self.counter.record("copy_h2d_blocking", dst)
        if name == "copy_" and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]):
            dst, src = args[0], args[1]
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            if src.device.type not in ("cpu", "meta") and dst.device.type == "cpu":
                self.counter.record("copy_d2h", src.device)
            elif src.device.type == "cpu" and dst.device.type not in ("cpu", "meta") and not non_blocking:
                self.counter.record("copy_h2d_blocking", dst.device)
        return func(*args, **kwargs)


def _region_names(regions) -> list[tuple[str, torch.nn.Module]]:
    if hasattr(regions, "items"):  # a mapping, nn.ModuleDict included
        return [(str(k), m) for k, m in regions.items()]
    if isinstance(regions, torch.nn.Module):
        regions = [regions]
    return [(f"{type(m).__name__}[{i}]", m) for i, m in enumerate(regions)]


def _grad_tensors(xs) -> list[torch.Tensor]:
    if isinstance(xs, torch.Tensor):
        xs = (xs,)
    return [x for x in (xs if isinstance(xs, (tuple, list)) else ()) if isinstance(x, torch.Tensor)
            and x.requires_grad and torch.is_grad_enabled()]


def _watch(counter: HostSyncCounter, name: str, module: torch.nn.Module) -> list:
    """Forward: pre/post hooks. Backward: a hook on the outputs' gradient (the module's backward
    starts) and one on the inputs' (it has ended). Tensor hooks rather than module full backward
    hooks, which do not fire under non-reentrant activation checkpointing. A recomputation there
    may stop early, without post() (torch.utils.checkpoint's early stop); the region it entered is
    left when its inputs' gradient is complete, by the hook its pre() registered."""

    def pre(mod, args):
        counter.enter(name)
        inputs = _grad_tensors(args)
        if inputs:
            state = {"left": False}

            def leave_once(grads):
                if not state["left"]:
                    state["left"] = True
                    counter.leave(name)
            torch.autograd.graph.register_multi_grad_hook(inputs, leave_once)

    def post(mod, args, output):
        counter.leave(name)
        outputs = _grad_tensors(output)
        if outputs and _grad_tensors(args):  # a backward that pre() lets us leave
            state = {"entered": False}

            def enter_once(grad):
                if not state["entered"]:
                    state["entered"] = True
                    counter.enter(name)
            for out in outputs:
                out.register_hook(enter_once)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@contextlib.contextmanager
def count_host_syncs(regions=()):
    """Count host-device syncs (see the module docstring) made in the ``with`` block.

    Args:
        regions: nn.Module, iterable of modules, or mapping name -> module (e.g.
            ``model.layers``, a ModuleDict: its keys name the layers). Events made while one runs
            forward or backward are attributed to it.
    Yields a HostSyncCounter; hooks and the ``Tensor.tolist`` wrapper are removed on exit.
    """
    counter = HostSyncCounter()
    handles = []
    for name, module in _region_names(regions):
        handles += _watch(counter, name, module)
    original = torch.Tensor.tolist

    def tolist(self, *args, **kwargs):
        counter.record("tolist", self.device)
        return original(self, *args, **kwargs)

    torch.Tensor.tolist = tolist
    try:
        with _SyncMode(counter):
            yield counter
    finally:
        torch.Tensor.tolist = original
        for h in handles:
            h.remove()
        counter._stack.clear()
