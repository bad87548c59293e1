"""Shims that let megatron-core 0.19.2 train a GPT on CPU with gloo (benchmarks only).

megatron-core is written for CUDA: it imports triton at package import time (MoE and inference
kernels that a dense GPT never calls), places every buffer on ``torch.cuda.current_device()``,
keeps its dropout RNG streams in CUDA generators and synchronises CUDA streams. ``install()``
points those calls at the CPU, the smallest set that lets its local layer spec, its pipeline
schedules, its DistributedDataParallel and its DistributedOptimizer run unchanged:

- ``triton``: a stub package present only while ``megatron.core`` is imported (its modules keep
  the stub's decorators); torch's inductor is imported first and never sees the stub, so
  ``torch.compile`` keeps working (it knows no triton, as on this machine).
- ``torch.cuda.current_device`` -> ``torch.device("cpu")`` (every ``device=`` argument),
  ``synchronize`` / ``set_device`` / ``manual_seed`` / ``empty_cache`` -> no-ops or CPU, CUDA
  streams and events -> inert objects (work on CPU is already ordered), the CUDA RNG state ->
  the CPU generator's (the RNG tracker forks it; dropout is 0 in the benchmark anyway),
  ``torch.cuda.memory_*`` -> 0.
- ``Tensor.type()`` names a CPU tensor ``torch.cuda.FloatTensor`` (its optimizers sort parameters by
  that string); ``Tensor.cuda()`` -> the tensor itself; the tensor factories (``torch.tensor``, ``zeros``, ...)
  given ``device="cuda"`` (written literally in its optimizer and schedules) -> CPU: one Python
  call more per factory call, a few hundred per step, microseconds against a step of seconds.

Nothing in megatron_th imports this module: it runs in megatron-core's benchmark processes only
(benchmarks/vs_megatron_core.py). Not a general CPU port: only the paths that benchmark runs.
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch

_CPU = torch.device("cpu")


class _Anything:
    """Stands for any triton object: callable (a decorator returns its function), any attribute."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return _Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __getitem__(self, key):
        return _Anything()


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def getattr_(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything()
    mod.__getattr__ = getattr_
    mod.__path__ = []
    mod.__version__ = "0.0.0"
    return mod


class _Inert:
    """A CUDA stream / event on CPU: every method does nothing and returns None."""

    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _patch_cuda() -> None:
    c = torch.cuda
    c.current_device = lambda: _CPU
    c.synchronize = lambda *a, **k: None
    c.set_device = lambda *a, **k: None
    c.empty_cache = lambda *a, **k: None
    c.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))  # torch.manual_seed calls
    c.manual_seed_all = lambda seed: None  # manual_seed_all: the CPU generator is already seeded
    c.get_rng_state = lambda *a, **k: torch.get_rng_state()
    c.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    c.Stream = _Inert
    c.Event = _Inert
    c.current_stream = lambda *a, **k: _Inert()
    c.default_stream = lambda *a, **k: _Inert()
    c.stream = lambda *a, **k: contextlib.nullcontext()
    c.device = lambda *a, **k: contextlib.nullcontext()
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
        setattr(c, name, lambda *a, **k: 0)
    c.reset_peak_memory_stats = lambda *a, **k: None
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.type = _cuda_type_names(torch.Tensor.type)
    for name in _FACTORIES:
        setattr(torch, name, _on_cpu(getattr(torch, name)))


_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "zeros_like",
              "ones_like", "empty_like")


def _cuda_type_names(tensor_type):
    """``Tensor.type()`` reporting CPU tensors as ``torch.cuda.*Tensor``: megatron-core's optimizer sorts
    parameters by that string (fp32 / fp16 / bf16) and asserts it on gradients before clipping."""
    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = tensor_type(self)
            return name.replace("torch.", "torch.cuda.", 1) if name.startswith("torch.") and ".cuda." not in name else name
        return tensor_type(self, dtype, non_blocking, **kwargs)
    return type_


def _is_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda")


def _on_cpu(factory):
    """``factory`` with ``device="cuda"`` (megatron-core writes it literally in places) made CPU."""
    def wrapped(*a, **k):
        if _is_cuda(k.get("device")):
            k["device"] = _CPU
        return factory(*a, **k)
    wrapped.__wrapped__ = factory
    return wrapped


def _patch_mcore() -> None:
    from megatron.core.tensor_parallel import random as rnd

    # the tracker forks and restores states through these helpers, which call CUDA generators directly
    rnd._set_cuda_rng_state = lambda new_state, *a, **k: torch.set_rng_state(new_state)
    rnd._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()



def install() -> None:
    """Import megatron.core with the triton stub, then point its CUDA calls at the CPU."""
    if "megatron.core" in sys.modules and getattr(sys.modules["megatron.core"], "_cpu_shims", False):
        return
    import torch._dynamo  # noqa: F401  (imported before the stub: they must see no triton)
    import torch._inductor.compile_fx  # noqa: F401
    from torch.utils._triton import has_triton, has_triton_package

    has_triton_package(), has_triton()  # cached as False before the stub exists
    names = ("triton", "triton.language", "triton.runtime", "triton.language.extra", "triton.compiler")
    stubs = {n: _stub_module(n) for n in names if n not in sys.modules}
    sys.modules.update(stubs)
    if "triton" in stubs:
        stubs["triton"].language = sys.modules["triton.language"]
    _patch_cuda()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import megatron.core  # noqa: F401
            import megatron.core.distributed  # noqa: F401
            import megatron.core.models.gpt  # noqa: F401
            import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401
            import megatron.core.optimizer  # noqa: F401
            import megatron.core.pipeline_parallel  # noqa: F401
    finally:
        for n in stubs:
            sys.modules.pop(n, None)
    _patch_mcore()
    sys.modules["megatron.core"]._cpu_shims = True
