"""Causal self-attention with document masking, behind one function and several backends.

Mask convention
---------------
q is ``[b, nq, s, hd]``, k and v are ``[b, nkv, s, hd]`` with ``nq % nkv == 0``; query head ``i``
uses kv head ``i // (nq // nkv)`` (GQA; nkv == 1 is MQA). Attention is always causal.
Packed documents are described by ``cu_seqlens``: a 1-D int32 tensor of document boundaries over
the batch flattened to THD layout (token ``t`` of row ``r`` is flat token ``r * s + t``). It starts
with 0, ends with ``b * s``, is strictly increasing and contains every multiple of ``s``, so no
document crosses a row. Query token t may attend key token t' iff ``t' <= t`` and both lie in the
same document; with a sliding window (below) also ``t - t' < window``. ``cu_seqlens=None`` means
plain causal attention. Boolean masks follow SDPA: True = may attend. GQA goes through SDPA's
``enable_gqa`` (exact on CPU; repeat_interleave of k/v on torch < 2.5).

Sliding window (``window=W``, an int >= 1; None = no window)
------------------------------------------------------------
Query t sees key t' iff ``t - W < t' <= t`` (itself and the W - 1 tokens before it), both in the
same document. This is transformers' definition (5.24, transformers/masking_utils.py:
``sliding_window_causal_mask_function(W)`` = ``sliding_window_overlay`` ``kv_idx > q_idx - W``
AND ``causal_mask_function`` ``kv_idx <= q_idx``; Mistral, Qwen2 and Gemma 3 use it). Its
flash-attention path says the same: modeling_flash_attention_utils.py passes
``window_size=(W - 1, W - 1)`` with ``causal=True`` (flash-attn's window is an inclusive distance,
and causal zeroes the right side). With packed sequences (position_ids restarting at 0)
transformers maps q_idx/kv_idx to the within-document positions and ANDs "same document"
(``remap_positions_for_packed_sequence``, ``packed_sequence_mask_function``), so the window
restarts with every document; inside one document the distance between positions equals the
distance in the flat sequence, which is what the backends here measure. A window at least as long
as the longest document (``DocumentPlan.max_len``; ``s`` without documents) removes nothing: the
call is then exactly the no-window call (same code path, bitwise). Per backend: dense and sdpa AND a
banded mask (sdpa has no document masking, so still refuses documents), varlen passes one banded
``[P, P]`` mask per padded group (cached on the plan), flex adds ``q_idx - kv_idx < W`` to its
mask_mod (one block mask per window on the plan), flash passes ``window_size=(W - 1, 0)`` to
flash_attn_varlen_func, te ``window_size=(W - 1, 0)`` to DotProductAttention (TE's documented
meaning: keys in ``[i - window_size[0], i + window_size[1]]`` inclusive, per sequence of the THD
batch). Nothing falls back to full attention: a bad ``window`` raises ValueError.

Document plan (no host syncs inside a layer)
--------------------------------------------
The model passes ``documents=``, a ``DocumentPlan`` (documents.py) built once per micro-batch on
the host and prepared for the backend before the first layer (``prepare_documents``): backends
only read host attributes and cached device tensors from it, so no layer calls ``.tolist()``,
``int()`` or ``bool()`` on a device tensor. ``cu_seqlens=`` (a tensor) still works for direct
callers: ``attention`` then builds a plan for that one call (one read of cu_seqlens).

Backends (``BACKENDS``: name -> function)
-----------------------------------------
dense   reference: boolean ``[b, 1, s, s]`` mask (causal AND same document [AND window]) to SDPA.
        Exact everywhere; O(s^2) memory and no use of the block structure, so slow.
sdpa    SDPA with ``is_causal=True`` (with a window shorter than s: an explicit banded causal
        ``[s, s]`` mask instead). It cannot separate documents, so it raises ValueError when
        cu_seqlens has a boundary other than a row end (never attends across documents silently).
varlen  exact per-document causal SDPA, generic on CPU and GPU. Documents are grouped by length;
        each group is gathered into ``[n, heads, P, hd]`` with every document padded at its END
        (by repeating its last token) to the group length P, and one causal SDPA runs per group.
        End padding is exact under a causal mask: real queries never see the padded keys, and the
        padded query rows are dropped, so nothing flows back through them; a window only removes
        keys further from each query, so this stays exact with the banded mask. The grouping is a
        small dynamic programme over the sorted lengths that trades padding work against per-call
        overhead (built once per micro-batch on the plan; the host layout is also cached per
        cu_seqlens).
flex    torch flex_attention with a block mask built from document ids once per micro-batch on the
        plan (meant for GPU: mask construction and kernel compiled there; on CPU torch runs it
        eagerly and has no backward). No dropout.
flash   flash_attn.flash_attn_varlen_func on THD tensors (CUDA + flash-attn, fp16/bf16).
te      Transformer Engine DotProductAttention, qkv_format="thd", mask "padding_causal" (CUDA).
auto    CUDA: flash (if installed, fp16/bf16) > flex (no dropout) > varlen when documents are
        present (or, without documents, when a window applies), else sdpa. CPU: varlen when
        documents are present, else sdpa. Every backend honours windows.
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from megatron_th.model.documents import DocumentPlan, window_causal_mask
from megatron_th.model.documents import _varlen_plan  # noqa: F401 (tests, benchmark)

__all__ = ["attention", "document_ids", "has_document_boundaries", "prepare_documents", "resolve_backend",
           "BACKENDS", "DocumentPlan", "UnknownBackendError"]

_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class UnknownBackendError(ValueError, RuntimeError):
    """An attention backend name that is not in BACKENDS."""


def document_ids(cu_seqlens, b, s):
    """LongTensor [b, s]: the document id of every token (ids are unique over the whole batch)."""
    if cu_seqlens is None:
        return torch.arange(b).unsqueeze(1).expand(b, s)
    flat = torch.arange(b * s, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens.long(), flat, right=True) - 1).view(b, s)


def has_document_boundaries(cu_seqlens, s) -> bool:
    """True if cu_seqlens (a tensor: reads its values, a host sync on a device; or a DocumentPlan:
    free) splits some row into more than one document."""
    if isinstance(cu_seqlens, DocumentPlan):
        return cu_seqlens.has_boundaries
    return cu_seqlens is not None and bool(torch.remainder(cu_seqlens, s).ne(0).any())


def _sdpa_call(q, k, v, dropout_p, scale, mask=None):
    if q.shape[1] != k.shape[1] and not _HAS_ENABLE_GQA:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    kw = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=mask is None, scale=scale, **kw)


def _has_docs(plan) -> bool:
    return plan is not None and plan.has_boundaries


def _check_window(window) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"attention window must be an int >= 1 or None, got {window!r}")


def _effective_window(window, plan, s: int):
    """``window`` if it removes some key (shorter than the longest document, or than s without
    documents), else None: the no-window path, exactly. Host ints only (no sync)."""
    if window is None:
        return None
    return window if window < (plan.max_len if plan is not None else s) else None


def _dense(q, k, v, plan, dropout_p, scale, window):
    b, _, s, _ = q.shape
    if plan is None:
        doc = torch.arange(b, device=q.device).unsqueeze(1).expand(b, s)
    else:
        doc = plan.doc_ids(q.device)
    mask = (doc.unsqueeze(2) == doc.unsqueeze(1)) & window_causal_mask(s, window, q.device)  # [b, s, s]
    return _sdpa_call(q, k, v, dropout_p, scale, mask=mask.unsqueeze(1))


def _causal_rows(q, k, v, dropout_p, scale, window):
    """Plain causal attention over whole rows, banded by ``window`` (None: is_causal=True)."""
    mask = None if window is None else window_causal_mask(q.shape[2], window, q.device)
    return _sdpa_call(q, k, v, dropout_p, scale, mask=mask)


def _sdpa(q, k, v, plan, dropout_p, scale, window):
    if _has_docs(plan):
        raise ValueError("attention backend 'sdpa' cannot apply document masking: cu_seqlens has "
                         "boundaries inside rows; use backend 'varlen', 'dense' or 'auto'")
    return _causal_rows(q, k, v, dropout_p, scale, window)


def _varlen(q, k, v, plan, dropout_p, scale, window):
    b, nq, s, hd = q.shape
    if not _has_docs(plan):
        return _causal_rows(q, k, v, dropout_p, scale, window)
    gather, shapes, slot = plan.varlen(nq * hd, q.device)
    masks = plan.varlen_masks(nq * hd, window, q.device) if window is not None else [None] * len(shapes)
    sizes = [n * p for n, p in shapes]
    # one gather per tensor into a padded THD buffer, split into [n, h, P, hd] groups (views)
    parts = [x.transpose(1, 2).reshape(b * s, x.shape[1], hd).index_select(0, gather).split(sizes)
             for x in (q, k, v)]
    outs = []
    for qg, kg, vg, (n, p), mask in zip(*parts, shapes, masks):
        qg, kg, vg = (x.view(n, p, -1, hd).transpose(1, 2) for x in (qg, kg, vg))
        out = _sdpa_call(qg, kg, vg, dropout_p, scale, mask=mask)
        outs.append(out.transpose(1, 2).reshape(n * p, nq, hd))
    out = torch.cat(outs).index_select(0, slot)  # [b*s, nq, hd] in flat token order
    return out.view(b, s, nq, hd).transpose(1, 2)


@functools.cache
def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _require_cuda(name, package, q):
    if not q.is_cuda:
        raise RuntimeError(f"attention backend {name!r} needs CUDA tensors and the {package} "
                           f"package; got tensors on {q.device}")
    if not _installed(package):
        raise ImportError(f"attention backend {name!r} needs the {package} package (not installed)")


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, plan, dropout_p, scale, window):
    if dropout_p:
        raise ValueError("attention backend 'flex' does not support dropout_p > 0")
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:
        raise ImportError(f"attention backend 'flex' needs torch.nn.attention.flex_attention: {e}")
    b, nq, s, _ = q.shape
    if plan is None:  # plain causal: one document per row
        plan = DocumentPlan(range(0, b * s + 1, s), b, s, device=q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=plan.block_mask(q.device, window), scale=scale, enable_gqa=nq != k.shape[1])


def _thd(q, k, v, plan):
    b, _, s, hd = q.shape
    if plan is None:
        cu, max_len = torch.arange(0, b * s + 1, s, dtype=torch.int32, device=q.device), s
    else:
        cu, max_len = plan.cu_seqlens(q.device), plan.max_len
    return [x.transpose(1, 2).reshape(b * s, x.shape[1], hd) for x in (q, k, v)], cu, max_len


def _window_size(window):
    """flash-attn / Transformer Engine ``window_size`` (left, right) for our ``window``: both
    count an inclusive distance (keys in ``[i - left, i + right]``), so W tokens is (W - 1, 0)."""
    return {} if window is None else {"window_size": (window - 1, 0)}


def _flash(q, k, v, plan, dropout_p, scale, window):
    _require_cuda("flash", "flash_attn", q)
    from flash_attn import flash_attn_varlen_func
    (qt, kt, vt), cu, max_len = _thd(q, k, v, plan)
    out = flash_attn_varlen_func(qt, kt, vt, cu, cu, max_len, max_len, dropout_p=dropout_p,
                                 softmax_scale=scale, causal=True, **_window_size(window))
    b, nq, s, hd = q.shape
    return out.reshape(b, s, nq, hd).transpose(1, 2)


_TE_MODULES: dict = {}


def _te(q, k, v, plan, dropout_p, scale, window):
    _require_cuda("te", "transformer_engine", q)
    import transformer_engine.pytorch as te
    b, nq, s, hd = q.shape
    key = (nq, k.shape[1], hd, float(dropout_p), scale, window)
    if key not in _TE_MODULES:  # window_size needs TE >= 1.2 (as Megatron-core asserts)
        _TE_MODULES[key] = te.DotProductAttention(
            nq, hd, num_gqa_groups=k.shape[1], attention_dropout=dropout_p, qkv_format="thd",
            attn_mask_type="padding_causal", softmax_scale=scale, **_window_size(window))
    (qt, kt, vt), cu, max_len = _thd(q, k, v, plan)
    out = _TE_MODULES[key](qt, kt, vt, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)
    return out.reshape(b, s, nq, hd).transpose(1, 2)


def _pick(is_cuda: bool, dtype: torch.dtype, has_boundaries: bool, dropout_p: float,
          windowed: bool = False) -> str:
    if not has_boundaries and not (is_cuda and windowed):
        return "sdpa"  # on CPU also with a window: the banded mask (varlen would do the same)
    if is_cuda:
        if dtype in (torch.float16, torch.bfloat16) and _installed("flash_attn"):
            return "flash"
        if not dropout_p and _installed("torch.nn.attention.flex_attention"):
            return "flex"
    return "varlen"


def resolve_backend(q, cu_seqlens=None, dropout_p=0.0, documents=None, window=None) -> str:
    """The backend that "auto" runs for these inputs. Give ``documents`` (a DocumentPlan) rather
    than ``cu_seqlens`` (a tensor, whose values this reads: a host sync on a device)."""
    _check_window(window)
    if window is not None and documents is None and cu_seqlens is not None:
        documents = DocumentPlan(cu_seqlens, q.shape[0], q.shape[2], device=q.device)  # for max_len
    has = documents.has_boundaries if documents is not None else has_document_boundaries(cu_seqlens, q.shape[2])
    windowed = _effective_window(window, documents, q.shape[2]) is not None
    return _pick(q.is_cuda, q.dtype, has, dropout_p, windowed)


def _auto(q, k, v, plan, dropout_p, scale, window):
    name = _pick(q.is_cuda, q.dtype, _has_docs(plan), dropout_p, window is not None)
    return BACKENDS[name](q, k, v, plan, dropout_p, scale, window)


BACKENDS = {"dense": _dense, "sdpa": _sdpa, "varlen": _varlen, "flex": _flex, "flash": _flash,
            "te": _te, "auto": _auto}


def _backend_fn(backend):
    fn = BACKENDS.get(backend)
    if fn is None:
        raise UnknownBackendError(f"unknown attention backend {backend!r}; available: "
                                  f"{', '.join(BACKENDS)}")
    return fn


def prepare_documents(documents: DocumentPlan, backend: str, *, device, dtype: torch.dtype, width: int,
                      dropout_p: float = 0.0, window: int | None = None) -> str:
    """Build, before the layers run, everything ``backend`` will read from ``documents``.

    ``device``/``dtype`` are those of q; ``width`` = local query heads * head_dim (the varlen
    grouping depends on it); ``dropout_p`` the attention dropout that will be used; ``window`` the
    sliding window the layers will pass (None: full causal). Window-dependent data is cached per
    window on the plan: a model whose layers use several windows calls this once per distinct
    window. Returns the backend that will run ("auto" resolved). Called once per micro-batch by
    GPTModel.forward, so that every layer finds its data cached on the plan. Raises
    UnknownBackendError, ValueError (window not an int >= 1 or None).
    """
    _backend_fn(backend)
    _check_window(window)
    device = torch.device(device)
    window = _effective_window(window, documents, documents.seq)
    name = backend if backend != "auto" else _pick(device.type == "cuda", dtype, documents.has_boundaries,
                                                   dropout_p, window is not None)
    if name == "dense":
        documents.doc_ids(device)
    elif name == "varlen" and documents.has_boundaries:
        documents.varlen(width, device)
        if window is not None:
            documents.varlen_masks(width, window, device)
    elif name == "flex" and not dropout_p:
        documents.block_mask(device, window)
    elif name in ("flash", "te"):
        documents.cu_seqlens(device)
    return name


def attention(q, k, v, *, cu_seqlens=None, documents=None, dropout_p=0.0, backend="auto",
              scale=None, window=None) -> torch.Tensor:
    """Causal (optionally document-masked, optionally sliding-window) attention; see the module
    docstring. -> [b, nq, s, hd]

    q [b, nq, s, hd], k/v [b, nkv, s, hd] (any float dtype the backend supports). Documents come
    as ``documents`` (a DocumentPlan for this [b, s]: the model path, no host sync) or as
    ``cu_seqlens`` (1-D int tensor: validated and planned for this call, one read of its values).
    ``window``: None (full causal within documents) or an int W >= 1: query t also needs
    ``t - t' < W`` (transformers' sliding window, in tokens; W >= the longest document is the
    no-window result). Raises UnknownBackendError, ValueError (shapes, cu_seqlens, both document
    arguments given, a plan for another shape, window not an int >= 1 or None), TypeError
    (documents not a DocumentPlan).
    """
    fn = _backend_fn(backend)
    _check_window(window)
    if (q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[1] % k.shape[1]
            or (k.shape[0], *k.shape[2:]) != (q.shape[0], *q.shape[2:])):
        raise ValueError(f"expected q [b, nq, s, hd] and k, v [b, nkv, s, hd] with nq % nkv == 0; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, s = q.shape[0], q.shape[2]
    if cu_seqlens is not None:
        if documents is not None:
            raise ValueError("attention takes cu_seqlens or documents, not both")
        documents = DocumentPlan(cu_seqlens, b, s, device=q.device)
    elif documents is not None:
        if not isinstance(documents, DocumentPlan):
            raise TypeError(f"documents must be a DocumentPlan, got {type(documents).__name__}")
        if (documents.batch, documents.seq) != (b, s):
            raise ValueError(f"document plan is for [b, s] = [{documents.batch}, {documents.seq}], "
                             f"attention got [{b}, {s}]")
    return fn(q, k, v, documents, dropout_p, scale, _effective_window(window, documents, s))
