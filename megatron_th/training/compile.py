"""``--compile``: torch.compile each transformer layer, applied from outside the model.

As torchtitan's ``apply_compile`` (torchtitan/models/llama3/infra/parallelize.py): every
``TransformerLayer`` is compiled on its own with ``fullgraph=True`` (a graph break raises instead
of silently splitting the layer), in place (``nn.Module.compile``: parameter names, and so
checkpoints, are unchanged). All layers share one code object, so the first layer's graph serves
the others (dynamo guards on the inputs, not on which layer runs). Embedding, RoPE tables, the
document plan and the chunked loss stay eager: they run once per micro-batch, not once per layer.

What keeps a layer one graph, and the same graph for every micro-batch:

- Tensor / sequence parallelism: while dynamo traces, the TP collectives of parallel/comm.py are
  custom ops that count their bytes at run time (comm.py's docstring).
- Per-TP-rank dropout streams (parallel/rng.py ``TPRng.fork``) swap the generator state, which
  dynamo cannot trace (``get_rng_state`` / ``set_rng_state`` are on its skip list), and a compiled
  graph draws its dropout masks from its own generator seeded from the default one, so it could
  not use the per-rank stream anyway. The fork around a dropout of probability 0 swaps a state
  nothing draws from: it is removed here (exact). A sharded dropout > 0 under TP is refused
  (``check_compile``), as Megatron-style recomputation refuses it (config/checks.py).
- The ``DocumentPlan`` (model/documents.py) is a Python object: dynamo guards on the attributes a
  layer reads (``has_boundaries``; ``max_len`` only under a sliding window) and on the shapes of
  the cached tensors, which are fixed for the dense, flex, flash and te backends. The CPU
  ``varlen`` layout has per-micro-batch shapes; under compile it runs as one opaque op
  (model/varlen_op.py) fed the plan's CPU ``cu_seqlens``, whose length is marked dynamic, so no
  layout recompiles (tests/test_compile.py counts the compiles).
"""
from __future__ import annotations

import contextlib
import types

import torch

from megatron_th.config import ConfigError

_CPU = torch.device("cpu")


def check_compile(cfg, tp: int) -> None:
    """Raise ConfigError when ``--compile`` meets dropout on tensor-parallel shards (attention
    heads; the residual stream under --sequence-parallel), which needs the per-TP-rank RNG stream
    a compiled graph cannot switch to (module docstring)."""
    m, sp = cfg.model, cfg.parallel.sequence_parallel
    if tp > 1 and (m.attention_dropout > 0 or (sp and m.hidden_dropout > 0)):
        raise ConfigError("--compile with --tensor-model-parallel-size > 1 needs --attention-dropout 0 (and "
                          "--hidden-dropout 0 under --sequence-parallel): a compiled layer cannot draw dropout "
                          "masks from the per-TP-rank RNG stream")


def _uses_varlen(attn, q: torch.Tensor) -> bool:
    """True when ``attn`` would run the varlen backend on documents with boundaries (attention.py
    ``_pick``: "auto" picks it on CPU) without dropout."""
    no_dropout = attn.dropout_p == 0 or not attn.training
    return no_dropout and (attn.backend == "varlen" or (attn.backend == "auto" and not q.is_cuda))


def _opaque_varlen(attn) -> None:
    """Route ``attn``'s document-masked varlen attention through model/varlen_op.py while dynamo
    traces; prepare the plan's CPU ``cu_seqlens`` (length marked dynamic) before the layers."""
    from megatron_th.model.varlen_op import varlen_attention

    core, prepare = attn._core, attn.prepare

    def prepare_with_bounds(self, documents, dtype, device):
        name = prepare(documents, dtype, device)
        if documents.has_boundaries:
            torch._dynamo.maybe_mark_dynamic(documents.cu_seqlens(_CPU), 0)
        return name

    def opaque_core(self, q, k, v, documents):
        if (torch.compiler.is_compiling() and documents is not None and documents.has_boundaries
                and _uses_varlen(self, q)):
            return varlen_attention(q, k, v, documents.cu_seqlens(_CPU), self.scale,
                                    self.window if self.window is not None else 0)
        return core(q, k, v, documents)

    attn.prepare = types.MethodType(prepare_with_bounds, attn)
    attn._core = types.MethodType(opaque_core, attn)


def _drop_idle_forks(layer) -> None:
    """Remove the TP RNG fork around dropouts of probability 0 (nothing draws: exact)."""
    attn = layer.self_attention
    if attn.dropout_p == 0:
        attn.sharded_rng = contextlib.nullcontext
    if layer.hidden_dropout == 0:
        layer.sharded_rng = contextlib.nullcontext


def compile_layers(chunks, backend="inductor", fullgraph: bool = True) -> int:
    """Compile, in place, every TransformerLayer of the model chunks ``chunks`` (GPTModel or
    pipeline stages, TP-sharded or not) with ``torch.compile(backend=backend,
    fullgraph=fullgraph)``; returns the number of layers. ``backend``: "inductor" for training;
    tests pass "eager" / "aot_eager" or a torch._dynamo.testing.CompileCounter. Call
    ``check_compile`` first under TP."""
    n = 0
    for chunk in chunks:
        for layer in chunk.layers.values():
            _drop_idle_forks(layer)
            _opaque_varlen(layer.self_attention)
            layer.compile(backend=backend, fullgraph=fullgraph)
            n += 1
    return n
