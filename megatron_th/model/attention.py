"""Causal self-attention with document masking, behind one function and several backends.

Mask convention
---------------
q is ``[b, nq, s, hd]``, k and v are ``[b, nkv, s, hd]`` with ``nq % nkv == 0``; query head ``i``
uses kv head ``i // (nq // nkv)`` (GQA; nkv == 1 is MQA). Attention is always causal.
Packed documents are described by ``cu_seqlens``: a 1-D int32 tensor of document boundaries over
the batch flattened to THD layout (token ``t`` of row ``r`` is flat token ``r * s + t``). It starts
with 0, ends with ``b * s``, is strictly increasing and contains every multiple of ``s``, so no
document crosses a row. Query token t may attend key token t' iff ``t' <= t`` and both lie in the
same document. ``cu_seqlens=None`` means plain causal attention. Boolean masks follow SDPA:
True = may attend. GQA goes through SDPA's ``enable_gqa`` (exact on CPU; repeat_interleave of k/v
on torch < 2.5).

Backends (``BACKENDS``: name -> function)
-----------------------------------------
dense   reference: boolean ``[b, 1, s, s]`` mask (causal AND same document) passed to SDPA.
        Exact everywhere; O(s^2) memory and no use of the block structure, so slow.
sdpa    SDPA with ``is_causal=True``. It cannot separate documents, so it raises ValueError when
        cu_seqlens has a boundary other than a row end (never attends across documents silently).
varlen  exact per-document causal SDPA, generic on CPU and GPU. Documents are grouped by length;
        each group is gathered into ``[n, heads, P, hd]`` with every document padded at its END
        (by repeating its last token) to the group length P, and one causal SDPA runs per group.
        End padding is exact under a causal mask: real queries never see the padded keys, and the
        padded query rows are dropped, so nothing flows back through them. The grouping is a small
        dynamic programme over the sorted lengths that trades padding work against per-call
        overhead (cached per cu_seqlens, since every layer of a step sees the same one).
flex    torch flex_attention with a block mask built from document ids (meant for GPU, compiled
        there; on CPU torch runs it eagerly and has no backward). No dropout.
flash   flash_attn.flash_attn_varlen_func on THD tensors (CUDA + flash-attn, fp16/bf16).
te      Transformer Engine DotProductAttention, qkv_format="thd", mask "padding_causal" (CUDA).
auto    CUDA: flash (if installed, fp16/bf16) > flex (no dropout) > varlen when documents are
        present, else sdpa. CPU: varlen when documents are present, else sdpa.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools

import torch
import torch.nn.functional as F

__all__ = ["attention", "document_ids", "has_document_boundaries", "resolve_backend", "BACKENDS",
           "UnknownBackendError"]

_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
# varlen grouping cost model, fitted on CPU for heads * head_dim = 512 (ms ~ units * 4.6e-5):
# a document of length P padded to L costs L * (L + _LINEAR); one SDPA call (fwd+bwd) costs
# _CALL_COST on top. Only speed depends on these numbers, never the result.
_LINEAR = 200
_CALL_COST = 6000


class UnknownBackendError(ValueError, RuntimeError):
    """An attention backend name that is not in BACKENDS."""


def document_ids(cu_seqlens, b, s):
    """LongTensor [b, s]: the document id of every token (ids are unique over the whole batch)."""
    if cu_seqlens is None:
        return torch.arange(b).unsqueeze(1).expand(b, s)
    flat = torch.arange(b * s, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens.long(), flat, right=True) - 1).view(b, s)


def has_document_boundaries(cu_seqlens, s) -> bool:
    """True if cu_seqlens splits some row into more than one document."""
    return cu_seqlens is not None and bool(torch.remainder(cu_seqlens, s).ne(0).any())


@functools.lru_cache(maxsize=64)
def _check_cu(cu: tuple, b: int, s: int) -> None:
    ok = (len(cu) >= 2 and cu[0] == 0 and cu[-1] == b * s
          and all(x < y for x, y in zip(cu, cu[1:])) and set(range(0, b * s + 1, s)) <= set(cu))
    if not ok:
        raise ValueError(f"cu_seqlens must start at 0, end at b*s={b * s}, increase strictly and "
                         f"contain every multiple of s={s}; got {list(cu)[:16]}...")


def _sdpa_call(q, k, v, dropout_p, scale, mask=None):
    if q.shape[1] != k.shape[1] and not _HAS_ENABLE_GQA:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    kw = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=mask is None, scale=scale, **kw)


def _dense(q, k, v, cu_seqlens, dropout_p, scale):
    b, _, s, _ = q.shape
    doc = document_ids(cu_seqlens, b, s).to(q.device)
    causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    mask = (doc.unsqueeze(2) == doc.unsqueeze(1)) & causal  # [b, s, s]
    return _sdpa_call(q, k, v, dropout_p, scale, mask=mask.unsqueeze(1))


def _sdpa(q, k, v, cu_seqlens, dropout_p, scale):
    if has_document_boundaries(cu_seqlens, q.shape[2]):
        raise ValueError("attention backend 'sdpa' cannot apply document masking: cu_seqlens has "
                         "boundaries inside rows; use backend 'varlen', 'dense' or 'auto'")
    return _sdpa_call(q, k, v, dropout_p, scale)


@functools.lru_cache(maxsize=16)
def _varlen_plan(cu: tuple, s: int, width: int):
    """-> (gather [T_pad]: flat token of every row of the padded buffer, group shapes [(n, P)],
    slot [b*s]: the buffer row holding each flat token's output)."""
    by_len: dict[int, list[int]] = {}
    for start, end in zip(cu, cu[1:]):
        by_len.setdefault(end - start, []).append(start)
    lens = sorted(by_len)
    count = [0, *itertools.accumulate(len(by_len[n]) for n in lens)]  # documents in lens[:j]
    call = _CALL_COST * 512 / width
    best, cut = [0.0], [0]  # best[j]: cheapest grouping of lens[:j]; last group is lens[cut[j]:j]
    for j in range(1, len(lens) + 1):
        w = lens[j - 1] * (lens[j - 1] + _LINEAR)
        c, i = min((best[i] + call + (count[j] - count[i]) * w, i) for i in range(j))
        best.append(c)
        cut.append(i)
    groups, j = [], len(lens)
    while j:
        groups.append(lens[cut[j]:j])
        j = cut[j]
    gather, shapes, base = [], [], 0
    slot = torch.empty(cu[-1], dtype=torch.long)  # flat token -> its row in the padded buffer
    for group in groups:
        starts = torch.tensor([st for n in group for st in by_len[n]]).unsqueeze(1)
        length = torch.tensor([n for n in group for _ in by_len[n]]).unsqueeze(1)
        ar = torch.arange(group[-1])
        gather.append((starts + torch.minimum(ar, length - 1)).flatten())  # pad = last token
        valid = (ar < length).flatten()
        slot[gather[-1][valid]] = base + valid.nonzero().squeeze(1)
        shapes.append((len(length), group[-1]))
        base += gather[-1].numel()
    return torch.cat(gather), shapes, slot


def _varlen(q, k, v, cu_seqlens, dropout_p, scale):
    b, nq, s, hd = q.shape
    if not has_document_boundaries(cu_seqlens, s):
        return _sdpa_call(q, k, v, dropout_p, scale)
    gather, shapes, slot = _varlen_plan(tuple(cu_seqlens.tolist()), s, nq * hd)
    gather, slot, sizes = gather.to(q.device), slot.to(q.device), [n * p for n, p in shapes]
    # one gather per tensor into a padded THD buffer, split into [n, h, P, hd] groups (views)
    parts = [x.transpose(1, 2).reshape(b * s, x.shape[1], hd).index_select(0, gather).split(sizes)
             for x in (q, k, v)]
    outs = []
    for qg, kg, vg, (n, p) in zip(*parts, shapes):
        qg, kg, vg = (x.view(n, p, -1, hd).transpose(1, 2) for x in (qg, kg, vg))
        outs.append(_sdpa_call(qg, kg, vg, dropout_p, scale).transpose(1, 2).reshape(n * p, nq, hd))
    out = torch.cat(outs).index_select(0, slot)  # [b*s, nq, hd] in flat token order
    return out.view(b, s, nq, hd).transpose(1, 2)


def _require_cuda(name, package, q):
    if not q.is_cuda:
        raise RuntimeError(f"attention backend {name!r} needs CUDA tensors and the {package} "
                           f"package; got tensors on {q.device}")
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"attention backend {name!r} needs the {package} package (not installed)")


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, cu_seqlens, dropout_p, scale):
    if dropout_p:
        raise ValueError("attention backend 'flex' does not support dropout_p > 0")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        raise ImportError(f"attention backend 'flex' needs torch.nn.attention.flex_attention: {e}")
    b, nq, s, _ = q.shape
    doc = document_ids(cu_seqlens, b, s).to(q.device)

    def same_doc_causal(bi, hi, qi, ki):
        return (qi >= ki) & (doc[bi, qi] == doc[bi, ki])

    block_mask = create_block_mask(same_doc_causal, b, None, s, s, device=q.device)
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=nq != k.shape[1])


def _thd(q, k, v, cu_seqlens):
    b, _, s, hd = q.shape
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, b * s + 1, s)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return [x.transpose(1, 2).reshape(b * s, x.shape[1], hd) for x in (q, k, v)], cu, max_len


def _flash(q, k, v, cu_seqlens, dropout_p, scale):
    _require_cuda("flash", "flash_attn", q)
    from flash_attn import flash_attn_varlen_func
    (qt, kt, vt), cu, max_len = _thd(q, k, v, cu_seqlens)
    out = flash_attn_varlen_func(qt, kt, vt, cu, cu, max_len, max_len, dropout_p=dropout_p,
                                 softmax_scale=scale, causal=True)
    b, nq, s, hd = q.shape
    return out.reshape(b, s, nq, hd).transpose(1, 2)


_TE_MODULES: dict = {}


def _te(q, k, v, cu_seqlens, dropout_p, scale):
    _require_cuda("te", "transformer_engine", q)
    import transformer_engine.pytorch as te
    b, nq, s, hd = q.shape
    key = (nq, k.shape[1], hd, float(dropout_p), scale)
    if key not in _TE_MODULES:
        _TE_MODULES[key] = te.DotProductAttention(
            nq, hd, num_gqa_groups=k.shape[1], attention_dropout=dropout_p, qkv_format="thd",
            attn_mask_type="padding_causal", softmax_scale=scale)
    (qt, kt, vt), cu, max_len = _thd(q, k, v, cu_seqlens)
    out = _TE_MODULES[key](qt, kt, vt, cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)
    return out.reshape(b, s, nq, hd).transpose(1, 2)


def resolve_backend(q, cu_seqlens=None, dropout_p=0.0) -> str:
    """The backend that "auto" runs for these inputs."""
    if not has_document_boundaries(cu_seqlens, q.shape[2]):
        return "sdpa"
    if q.is_cuda:
        if q.dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn"):
            return "flash"
        if not dropout_p and importlib.util.find_spec("torch.nn.attention.flex_attention"):
            return "flex"
    return "varlen"


def _auto(q, k, v, cu_seqlens, dropout_p, scale):
    return BACKENDS[resolve_backend(q, cu_seqlens, dropout_p)](q, k, v, cu_seqlens, dropout_p, scale)


BACKENDS = {"dense": _dense, "sdpa": _sdpa, "varlen": _varlen, "flex": _flex, "flash": _flash,
            "te": _te, "auto": _auto}


def attention(q, k, v, *, cu_seqlens=None, dropout_p=0.0, backend="auto", scale=None) -> torch.Tensor:
    """Causal (optionally document-masked) attention; see the module docstring. -> [b, nq, s, hd]"""
    fn = BACKENDS.get(backend)
    if fn is None:
        raise UnknownBackendError(f"unknown attention backend {backend!r}; available: "
                                  f"{', '.join(BACKENDS)}")
    if (q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[1] % k.shape[1]
            or (k.shape[0], *k.shape[2:]) != (q.shape[0], *q.shape[2:])):
        raise ValueError(f"expected q [b, nq, s, hd] and k, v [b, nkv, s, hd] with nq % nkv == 0; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point():
            raise ValueError("cu_seqlens must be a 1-D integer (int32) tensor")
        _check_cu(tuple(cu_seqlens.tolist()), q.shape[0], q.shape[2])
    return fn(q, k, v, cu_seqlens, dropout_p, scale)
