"""Sliding-window attention (issue 15, item 4) against transformers' definition.

The definition is proven, not assumed: transformers' own mask functions (masking_utils
``sliding_window_causal_mask_function``, and ``create_sliding_window_causal_mask`` on packed
position_ids, whose window restarts with every document) must give the very mask the float64
reference below writes out from the definition (``0 <= t - t' < W``, same document). Every CPU
backend must then match that reference, forward and backward, at sequence lengths longer than the
window with documents on. flash and te (CUDA only) are checked on CPU through fakes that implement
flash-attn's / Transformer Engine's documented ``window_size`` semantics and record what our code
passes.
"""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from megatron_th.model import attention as attn_mod
from megatron_th.model.attention import attention, prepare_documents, resolve_backend
from megatron_th.model.documents import DocumentPlan, _varlen_plan, window_causal_mask
from megatron_th.utils.host_syncs import count_host_syncs

ATOL = RTOL = 1e-5
B, NQ, NKV, S, HD = 2, 4, 2, 24, 8
LENGTHS = [[1, 3, 9, 11], [24]]  # documents per row: 1 token, shorter and longer than the windows
WINDOWS = [1, 3, 9, 11, 40]  # 1, small, = a document length (9, 11), > s (24 = s: see the bitwise test)


# ----------------------------------------------------------------------------- reference
def bounds_of(lengths):
    out = [0]
    for row in lengths:
        for n in row:
            out.append(out[-1] + n)
    return out


def allowed_mask(lengths, s, window):
    """Bool [b, s, s] written out from the definition with Python loops: query t sees key t' iff
    both are in the same document, t' <= t and (window None or t - t' < window)."""
    b = len(lengths)
    ok = torch.zeros(b, s, s, dtype=torch.bool)
    for r, row in enumerate(lengths):
        start = 0
        for n in row:
            for t in range(start, start + n):
                for u in range(start, t + 1):
                    ok[r, t, u] = window is None or t - u < window
            start += n
    return ok


def reference(q, k, v, allowed, scale=None):
    """Explicit float64 softmax(q k^T * scale + mask) v with GQA head i -> kv head i // group."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def make_qkv(b=B, nq=NQ, nkv=NKV, s=S, hd=HD, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, s, hd, generator=g) for h in (nq, nkv, nkv)]


def cu_of(lengths):
    return torch.tensor(bounds_of(lengths), dtype=torch.int32)


# ----------------------------------------------------------------------------- the definition
def test_definition_is_transformers_sliding_window():
    """Our reference mask and window_causal_mask equal transformers' own sliding-window mask
    functions, plain and with packed documents (position_ids restarting at 0 per document)."""
    from transformers import MistralConfig
    from transformers.masking_utils import create_sliding_window_causal_mask, sliding_window_causal_mask_function

    n = 13
    qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
    for w in (1, 2, 5, 13, 20):
        theirs = sliding_window_causal_mask_function(w)(torch.tensor(0), torch.tensor(0), qi, ki)
        assert torch.equal(theirs, window_causal_mask(n, w)), w
        assert torch.equal(theirs, allowed_mask([[n]], n, w)[0]), w
    assert torch.equal(window_causal_mask(n, None), allowed_mask([[n]], n, None)[0])

    position_ids = torch.tensor([[p for m in row for p in range(m)] for row in LENGTHS])
    for w in (1, 3, 9):
        cfg = MistralConfig(sliding_window=w, hidden_size=8, num_attention_heads=2, num_key_value_heads=1)
        cfg._attn_implementation = "sdpa"
        mask = create_sliding_window_causal_mask(config=cfg, inputs_embeds=torch.zeros(B, S, 8),
                                                 attention_mask=None, cache=None, position_ids=position_ids)
        assert mask.dtype == torch.bool and mask.shape == (B, 1, S, S)
        assert torch.equal(mask[:, 0], allowed_mask(LENGTHS, S, w)), w


# ----------------------------------------------------------------------------- CPU backends
def check(backends, q, k, v, lengths, window, cu=None, grads=True, seed=1):
    """Each backend's output (and dq, dk, dv if ``grads``) vs the float64 reference of the
    definition, computed once for all ``backends``."""
    ref_in = [x.double().requires_grad_(grads) for x in (q, k, v)]
    ref = reference(*ref_in, allowed_mask(lengths, q.shape[2], window))
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if grads:
        ref.backward(grad)
    for backend in backends:
        xs = [x.clone().requires_grad_(grads) for x in (q, k, v)]
        with torch.set_grad_enabled(grads):
            out = attention(*xs, cu_seqlens=cu, backend=backend, window=window)
        torch.testing.assert_close(out.double(), ref.detach(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{backend}: {m}")
        if grads:
            out.backward(grad.float())
            for name, x, r in zip("qkv", xs, ref_in):
                torch.testing.assert_close(x.grad.double(), r.grad, atol=ATOL, rtol=RTOL,
                                           msg=lambda m: f"{backend} d{name}: {m}")


def test_backends_with_documents_match_reference():
    q, k, v = make_qkv()
    for w in WINDOWS:
        check(["dense", "varlen"] + (["auto"] if w in (3, 40) else []), q, k, v, LENGTHS, w, cu=cu_of(LENGTHS))


def test_sdpa_without_documents_matches_reference():
    """sdpa (and varlen/auto without documents) use a banded causal mask when W < s."""
    q, k, v = make_qkv(b=1, nq=4, nkv=1, s=17, seed=2)
    for w in (1, 4, 17):
        check(["sdpa", "varlen", "auto"], q, k, v, [[17]], w)


def test_sdpa_still_refuses_documents_with_a_window():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="sdpa"):
        attention(q, k, v, cu_seqlens=cu_of(LENGTHS), backend="sdpa", window=3)


def test_varlen_end_padding_stays_exact_under_a_window():
    """Documents of 30 and 31 tokens share one padded (2, 31) SDPA call with a banded mask."""
    lengths = [[30, 31]]
    assert _varlen_plan(tuple(bounds_of(lengths)), 61, 2 * 16)[1] == [(2, 31)]
    q, k, v = make_qkv(b=1, nq=2, nkv=1, s=61, hd=16, seed=3)
    check(["varlen"], q, k, v, lengths, 7, cu=cu_of(lengths))


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_flex_forward_matches_reference_on_cpu():
    """flex has no backward on CPU: forward only; one plan, one block mask per window."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = make_qkv()
    plan = DocumentPlan(cu_of(LENGTHS), B, S)
    for w in (1, 3, 9):
        ref = reference(q.double(), k.double(), v.double(), allowed_mask(LENGTHS, S, w))
        with torch.no_grad():
            out = attention(q, k, v, documents=plan, backend="flex", window=w)
        torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=RTOL)
    masks = {key for key in plan._cache if key[0] == "block_mask"}
    assert masks == {("block_mask", w, plan.device) for w in (1, 3, 9)}, masks


def test_window_covering_every_document_is_exactly_no_window():
    q, k, v = make_qkv(seed=4)
    cu = cu_of(LENGTHS)
    for backend in ("dense", "varlen"):
        full = attention(q, k, v, cu_seqlens=cu, backend=backend)
        for w in (24, 40):  # >= the longest document (24 tokens, row 1)
            assert torch.equal(attention(q, k, v, cu_seqlens=cu, backend=backend, window=w), full)
        assert not torch.equal(attention(q, k, v, cu_seqlens=cu, backend=backend, window=23), full)
    full = attention(q, k, v, backend="sdpa")
    assert torch.equal(attention(q, k, v, backend="sdpa", window=S), full)


@pytest.mark.parametrize("window", [0, -2, 2.5, True, "4"])
def test_bad_window_raises(window):
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, backend="dense", window=window)
    with pytest.raises(ValueError, match="window"):
        prepare_documents(DocumentPlan(cu_of(LENGTHS), B, S), "varlen", device="cpu", dtype=torch.float32,
                          width=NQ * HD, window=window)


def test_prepared_plan_is_keyed_by_window_and_layers_do_not_sync():
    """prepare_documents once per distinct window (Gemma 3 interleaves local and global layers);
    the layers then build nothing and make no host sync."""
    q, k, v = make_qkv(seed=5)
    plan = DocumentPlan(cu_of(LENGTHS), B, S)
    for w in (3, None, 5):
        assert prepare_documents(plan, "auto", device="cpu", dtype=torch.float32, width=NQ * HD, window=w) == "varlen"
        prepare_documents(plan, "dense", device="cpu", dtype=torch.float32, width=NQ * HD, window=w)
    masks = {key[2]: value for key, value in plan._cache.items() if key[0] == "varlen_masks"}
    assert set(masks) == {3, 5}  # None needs no mask
    _, shapes, _ = plan.varlen(NQ * HD)
    for w in (3, 5):  # one banded [P, P] mask per padded group longer than the window
        assert [p for (_, p), m in zip(shapes, masks[w]) if m is not None] == [p for _, p in shapes if p > w]
        for (_, p), m in zip(shapes, masks[w]):
            assert m is None or torch.equal(m, allowed_mask([[p]], p, w)[0])
    built = set(plan._cache)
    with count_host_syncs() as counter:
        for w in (3, None, 5):
            for backend in ("varlen", "dense"):
                xs = [x.clone().requires_grad_() for x in (q, k, v)]
                attention(*xs, documents=plan, backend=backend, window=w).sum().backward()
    assert counter.count == 0, counter.events
    assert set(plan._cache) == built


def test_auto_never_drops_a_window():
    """auto on CUDA without documents takes a window-capable kernel, not plain is_causal SDPA."""
    assert attn_mod._pick(True, torch.float32, False, 0.0, windowed=False) == "sdpa"
    assert attn_mod._pick(True, torch.float32, False, 0.0, windowed=True) in ("flex", "varlen")
    assert attn_mod._pick(True, torch.float32, False, 0.1, windowed=True) == "varlen"
    q, _, _ = make_qkv()
    assert resolve_backend(q, cu_of(LENGTHS), window=3) == "varlen"
    assert resolve_backend(q, None, window=3) == "sdpa"


# ----------------------------------------------------------------------------- flash / te mapping
def documented_local_attention(qt, kt, vt, cu, scale, left, right, causal):
    """THD attention as flash-attn and Transformer Engine document ``window_size``: per sequence,
    query i sees keys in ``[i - left, i + right]`` inclusive (-1: unbounded), and ``j <= i`` if
    causal (seqlen_q == seqlen_k here). qt [t, nq, hd], kt/vt [t, nkv, hd] -> [t, nq, hd]."""
    out = torch.zeros_like(qt, dtype=torch.float64)
    group = qt.shape[1] // kt.shape[1]
    for a, z in zip(cu.tolist(), cu.tolist()[1:]):
        i, j = torch.arange(z - a)[:, None], torch.arange(z - a)[None, :]
        ok = torch.ones(z - a, z - a, dtype=torch.bool)
        if causal:
            ok &= j <= i
        if left >= 0:
            ok &= j >= i - left
        if right >= 0:
            ok &= j <= i + right
        q, k, v = (x[a:z].double().transpose(0, 1) for x in (qt, kt, vt))
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = (q @ k.transpose(1, 2) * scale).masked_fill(~ok, float("-inf"))
        out[a:z] = (scores.softmax(-1) @ v).transpose(0, 1)
    return out.to(qt.dtype)


def fake_flash_module(calls):
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                               causal=False, window_size=(-1, -1)):
        calls.append({"window_size": window_size, "causal": causal, "max": (max_q, max_k)})
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and dropout_p == 0.0
        scale = softmax_scale or q.shape[-1] ** -0.5
        return documented_local_attention(q, k, v, cu_q, scale, *window_size, causal)
    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


def fake_te_modules(calls):
    class DotProductAttention:
        def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                     qkv_format="sbhd", attn_mask_type="causal", softmax_scale=None, window_size=None):
            assert qkv_format == "thd" and attn_mask_type == "padding_causal"
            self.window_size = window_size
            self.window = (-1, 0) if window_size is None else window_size  # TE check_set_window_size
            self.scale = softmax_scale or kv_channels ** -0.5

        def __call__(self, q, k, v, cu_seqlens_q, cu_seqlens_kv, max_seqlen_q, max_seqlen_kv):
            calls.append({"window_size": self.window_size})
            out = documented_local_attention(q, k, v, cu_seqlens_q, self.scale, *self.window, True)
            return out.reshape(out.shape[0], -1)  # TE returns [t, heads * head_dim]

    te_pt = types.ModuleType("transformer_engine.pytorch")
    te_pt.DotProductAttention = DotProductAttention
    te = types.ModuleType("transformer_engine")
    te.pytorch = te_pt
    return {"transformer_engine": te, "transformer_engine.pytorch": te_pt}


@pytest.mark.parametrize("backend", ["flash", "te"])
def test_cuda_backends_pass_the_window_their_library_documents(backend, monkeypatch):
    calls = []
    monkeypatch.setattr(attn_mod, "_require_cuda", lambda *a: None)
    monkeypatch.setattr(attn_mod, "_TE_MODULES", {})
    if backend == "flash":
        monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_module(calls))
    else:
        for name, module in fake_te_modules(calls).items():
            monkeypatch.setitem(sys.modules, name, module)
    q, k, v = make_qkv(seed=6)
    cu = cu_of(LENGTHS)
    expected = {None: None, 1: (0, 0), 3: (2, 0), 24: None}  # 24 >= every document
    for w, size in expected.items():
        calls.clear()
        check([backend], q, k, v, LENGTHS, w, cu=cu, grads=False)
        assert [c["window_size"] for c in calls] == ([(-1, -1)] if backend == "flash" and size is None else [size])
