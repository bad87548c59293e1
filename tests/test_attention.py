"""Tests for megatron_th.model.attention against an independent float64 reference.

The reference computes document ids with a plain Python loop over cu_seqlens and runs an explicit
softmax over q @ k^T with a -inf mask (causal AND same document), in float64. Backends run in
float32 and must match it, forward and backward, to ~1e-5.
"""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_th.model import attention as attn_mod
from megatron_th.model.attention import (
    BACKENDS,
    UnknownBackendError,
    attention,
    document_ids,
    has_document_boundaries,
    resolve_backend,
)

CPU_DOC_BACKENDS = ["dense", "varlen", "auto"]  # honour document masking on CPU
ATOL = RTOL = 1e-5


# ----------------------------------------------------------------------------- reference
def ref_doc_ids(cu, b, s):
    ids = [[-1] * s for _ in range(b)]
    bounds = cu.tolist() if cu is not None else list(range(0, b * s + 1, s))
    for doc, (start, end) in enumerate(zip(bounds, bounds[1:])):
        for t in range(start, end):
            ids[t // s][t % s] = doc
    return torch.tensor(ids)


def reference(q, k, v, cu, scale=None):
    """Explicit float64 attention: softmax(q k^T * scale + mask) v, mask from document ids."""
    b, nq, s, hd = q.shape
    group = nq // k.shape[1]
    kv_head = torch.tensor([i // group for i in range(nq)])
    k, v = k[:, kv_head], v[:, kv_head]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    ids = ref_doc_ids(cu, b, s)
    pos = torch.arange(s)
    allowed = (pos[None, :, None] >= pos[None, None, :]) & (ids[:, :, None] == ids[:, None, :])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def make_qkv(b, nq, nkv, s, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, s, hd, generator=g) for h in (nq, nkv, nkv)]


def cu_from_cuts(b, s, cuts_per_row):
    bounds = [0]
    for r, cuts in enumerate(cuts_per_row):
        bounds += [r * s + c for c in sorted(cuts)] + [(r + 1) * s]
    return torch.tensor(bounds, dtype=torch.int32)


def check_against_reference(backend, q, k, v, cu, scale=None, seed=1):
    """Forward and backward (grads of q, k, v) of `backend` in fp32 vs the float64 reference."""
    xs = [x.clone().float().requires_grad_() for x in (q, k, v)]
    rs = [x.clone().double().requires_grad_() for x in (q, k, v)]
    out = attention(*xs, cu_seqlens=cu, backend=backend, scale=scale)
    ref = reference(*rs, cu, scale=scale)
    assert out.shape == ref.shape == q.shape
    torch.testing.assert_close(out.double(), ref.detach(), atol=ATOL, rtol=RTOL)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(grad.float())
    ref.backward(grad)
    for name, x, r in zip("qkv", xs, rs):
        torch.testing.assert_close(x.grad.double(), r.grad, atol=ATOL, rtol=RTOL, msg=lambda m: f"d{name}: {m}")


# ----------------------------------------------------------------------------- fixed cases
# (name, b, nq, nkv, s, hd, cuts per row or None for cu_seqlens=None)
CASES = [
    ("no_cu_mha_b1", 1, 4, 4, 33, 16, None),
    ("row_ends_only_b3", 3, 4, 2, 24, 8, [[], [], []]),
    ("length1_docs_gqa", 3, 4, 2, 12, 8, [list(range(1, 12))] * 3),
    ("length1_docs_mqa_b1", 1, 4, 1, 9, 16, [list(range(1, 9))]),
    ("many_docs_mha", 3, 2, 2, 40, 16, [[1, 2, 5, 9, 10, 20, 33], [17], list(range(3, 40, 3))]),
    ("mixed_gqa4", 3, 8, 2, 37, 8, [[5, 30], [], [1, 36]]),
    ("padded_group", 1, 2, 1, 61, 16, [[30]]),  # lengths 30 and 31 share one padded SDPA call
    ("one_doc_row_plus_docs", 3, 4, 4, 20, 8, [[], [7, 8, 13], []]),
]


def case_inputs(case, seed=0):
    _, b, nq, nkv, s, hd, cuts = case
    q, k, v = make_qkv(b, nq, nkv, s, hd, seed)
    return q, k, v, (None if cuts is None else cu_from_cuts(b, s, cuts))


@pytest.mark.parametrize("backend", CPU_DOC_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_backend_matches_reference(backend, case):
    check_against_reference(backend, *case_inputs(case))


@pytest.mark.parametrize("case", [c for c in CASES if c[6] is None or not any(c[6])],
                         ids=[c[0] for c in CASES if c[6] is None or not any(c[6])])
def test_sdpa_without_documents_matches_reference(case):
    check_against_reference("sdpa", *case_inputs(case))


@pytest.mark.parametrize("backend", ["dense", "sdpa", "varlen"])
def test_custom_scale(backend):
    q, k, v = make_qkv(3, 4, 2, 21, 8, seed=3)
    cu = None if backend == "sdpa" else cu_from_cuts(3, 21, [[4], [], [1, 2, 19]])
    check_against_reference(backend, q, k, v, cu, scale=0.37)


def test_padded_group_is_really_padded():
    """The "padded_group" case must exercise end padding: both documents in one (2, 31) call."""
    cu = cu_from_cuts(1, 61, [[30]])
    _, shapes, _ = attn_mod._varlen_plan(tuple(cu.tolist()), 61, 2 * 16)
    assert shapes == [(2, 31)]


def test_varlen_non_contiguous_inputs():
    """Model code hands over [b, s, h, hd] tensors transposed to [b, h, s, hd] (strided views)."""
    b, s, nq, nkv, hd = 3, 26, 4, 2, 8
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in make_qkv(b, nq, nkv, s, hd, 5))
    assert not q.is_contiguous()
    check_against_reference("varlen", q, k, v, cu_from_cuts(b, s, [[3, 11], [25], []]))


# ----------------------------------------------------------------------------- property test
@st.composite
def problems(draw):
    b = draw(st.sampled_from([1, 3]))
    nkv = draw(st.sampled_from([1, 2, 4]))
    nq = nkv * draw(st.sampled_from([1, 2, 4]))
    s = draw(st.integers(1, 48))
    hd = draw(st.sampled_from([4, 16]))
    kind = draw(st.sampled_from(["none", "one_per_row", "length1", "many", "random"]))
    inner = list(range(1, s))
    if kind == "none":
        cu = None
    else:
        rows = []
        for _ in range(b):
            if kind == "one_per_row" or not inner:
                rows.append([])
            elif kind == "length1":
                rows.append(inner)
            elif kind == "many":
                rows.append(draw(st.lists(st.sampled_from(inner), min_size=len(inner) // 2, unique=True)))
            else:
                rows.append(draw(st.lists(st.sampled_from(inner), max_size=6, unique=True)))
        cu = cu_from_cuts(b, s, rows)
    return b, nq, nkv, s, hd, cu, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(problems())
def test_random_documents_match_reference(problem):
    b, nq, nkv, s, hd, cu, seed = problem
    q, k, v = make_qkv(b, nq, nkv, s, hd, seed)
    backends = CPU_DOC_BACKENDS + ([] if has_document_boundaries(cu, s) else ["sdpa"])
    for backend in backends:
        check_against_reference(backend, q, k, v, cu, seed=seed)


def test_varlen_never_attends_across_documents():
    """Changing keys/values of one document leaves every other document's output unchanged."""
    b, s = 2, 30
    q, k, v = make_qkv(b, 4, 2, s, 8, seed=7)
    cu = cu_from_cuts(b, s, [[10, 21], [5]])
    out = attention(q, k, v, cu_seqlens=cu, backend="varlen")
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 10:21] += 5.0  # second document of row 0
    v2[0, :, 10:21] -= 3.0
    out2 = attention(q, k2, v2, cu_seqlens=cu, backend="varlen")
    changed = (out2 - out).abs().amax(dim=(1, 3)) > 0  # [b, s]
    expected = torch.zeros(b, s, dtype=torch.bool)
    expected[0, 10:21] = True
    assert torch.equal(changed, expected)


# ----------------------------------------------------------------------------- helpers, errors
def test_document_ids_and_boundaries():
    cu = cu_from_cuts(2, 5, [[2], []])  # [0, 2, 5, 10]
    assert cu.tolist() == [0, 2, 5, 10]
    assert document_ids(cu, 2, 5).tolist() == [[0, 0, 1, 1, 1], [2, 2, 2, 2, 2]]
    assert document_ids(cu, 2, 5).dtype == torch.long
    assert has_document_boundaries(cu, 5)
    assert not has_document_boundaries(torch.tensor([0, 5, 10], dtype=torch.int32), 5)
    assert not has_document_boundaries(None, 5)


def test_sdpa_refuses_document_boundaries():
    q, k, v = make_qkv(2, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="sdpa"):
        attention(q, k, v, cu_seqlens=cu_from_cuts(2, 8, [[3], []]), backend="sdpa")
    out = attention(q, k, v, cu_seqlens=cu_from_cuts(2, 8, [[], []]), backend="sdpa")
    torch.testing.assert_close(out, attention(q, k, v, backend="dense"))


def test_unknown_backend_raises():
    q, k, v = make_qkv(1, 2, 2, 4, 8)
    with pytest.raises(UnknownBackendError, match="nope"):
        attention(q, k, v, backend="nope")
    assert issubclass(UnknownBackendError, ValueError) and issubclass(UnknownBackendError, RuntimeError)


@pytest.mark.parametrize("bounds", [[0, 3, 8], [1, 4, 8, 16], [0, 4, 4, 8, 16], [0, 3, 9, 16], [0, 8, 15]])
def test_invalid_cu_seqlens_raise(bounds):
    q, k, v = make_qkv(2, 2, 2, 8, 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention(q, k, v, cu_seqlens=torch.tensor(bounds, dtype=torch.int32), backend="dense")


def test_shape_mismatch_raises():
    q, k, v = make_qkv(1, 3, 2, 4, 8)  # 3 % 2 != 0
    with pytest.raises(ValueError, match="nq % nkv"):
        attention(q, k, v, backend="dense")


def test_auto_resolution_on_cpu():
    q, _, _ = make_qkv(2, 2, 2, 8, 8)
    assert resolve_backend(q, None) == "sdpa"
    assert resolve_backend(q, cu_from_cuts(2, 8, [[], []])) == "sdpa"
    assert resolve_backend(q, cu_from_cuts(2, 8, [[1], []])) == "varlen"
    assert resolve_backend(q, cu_from_cuts(2, 8, [[1], []]), dropout_p=0.1) == "varlen"


def test_registry_holds_every_backend():
    assert set(BACKENDS) == {"dense", "sdpa", "varlen", "flex", "flash", "te", "auto"}


# ----------------------------------------------------------------------------- GPU-only backends
@pytest.mark.parametrize("backend,package", [("flash", "flash_attn"), ("te", "transformer_engine")])
def test_cuda_backends_on_cpu_raise_clear_error(backend, package):
    q, k, v = make_qkv(1, 2, 2, 8, 8)
    with pytest.raises((RuntimeError, ImportError)) as info:
        attention(q, k, v, cu_seqlens=cu_from_cuts(1, 8, [[3]]), backend=backend)
    msg = str(info.value)
    assert backend in msg and package in msg and "CUDA" in msg and "\n" not in msg


def _cuda_and(package):
    return torch.cuda.is_available() and importlib.util.find_spec(package) is not None


@pytest.mark.parametrize("backend,package", [("flash", "flash_attn"), ("te", "transformer_engine")])
def test_cuda_backends_match_reference(backend, package):
    if not _cuda_and(package):
        pytest.skip(f"needs CUDA and {package}")
    b, nq, nkv, s, hd = 3, 8, 2, 64, 64
    q, k, v = make_qkv(b, nq, nkv, s, hd, seed=11)
    cu = cu_from_cuts(b, s, [[1, 17, 40], [], [63]])
    out = attention(*(x.cuda().bfloat16() for x in (q, k, v)), cu_seqlens=cu.cuda(), backend=backend)
    torch.testing.assert_close(out.double().cpu(), reference(q.double(), k.double(), v.double(), cu),
                               atol=3e-2, rtol=3e-2)


# ----------------------------------------------------------------------------- flex
def _flex_forward_cpu_problem():
    """None if flex_attention's forward runs on CPU in this torch, else why not."""
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    try:
        q, k, v = make_qkv(1, 2, 2, 8, 8)
        attention(q, k, v, cu_seqlens=cu_from_cuts(1, 8, [[3]]), backend="flex")
    except Exception as e:  # noqa: BLE001 - the reason is reported verbatim in the skip
        return f"flex_attention forward fails on CPU in torch {torch.__version__}: {type(e).__name__}: {e}"
    return None


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "no_cu_mha_b1"] + [CASES[0]],
                         ids=[c[0] for c in CASES if c[0] != "no_cu_mha_b1"] + [CASES[0][0]])
def test_flex_forward_matches_reference_on_cpu(case):
    problem = _flex_forward_cpu_problem()
    if problem:
        pytest.skip(problem)
    q, k, v, cu = case_inputs(case)
    with torch.no_grad():
        out = attention(q, k, v, cu_seqlens=cu, backend="flex")
    torch.testing.assert_close(out.double(), reference(q.double(), k.double(), v.double(), cu),
                               atol=ATOL, rtol=RTOL)


def test_flex_rejects_dropout():
    q, k, v = make_qkv(1, 2, 2, 8, 8)
    with pytest.raises(ValueError, match="flex.*dropout"):
        attention(q, k, v, cu_seqlens=cu_from_cuts(1, 8, [[3]]), dropout_p=0.1, backend="flex")


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("backend", ["varlen", "dense"])
def test_dropout_is_seeded_and_active(backend):
    b, s = 2, 24
    q, k, v = make_qkv(b, 4, 2, s, 8, seed=2)
    cu = cu_from_cuts(b, s, [[5, 12], [20]])

    def run(seed, p):
        torch.manual_seed(seed)
        return attention(q, k, v, cu_seqlens=cu, dropout_p=p, backend=backend)

    clean = run(0, 0.0)
    a, a2, other = run(123, 0.5), run(123, 0.5), run(124, 0.5)
    assert not torch.allclose(a, clean)
    assert torch.equal(a, a2)
    assert not torch.equal(a, other)


def test_dropout_roughly_preserves_expectation():
    b, s = 1, 16
    q, k, v = make_qkv(b, 2, 2, s, 4, seed=4)
    cu = cu_from_cuts(b, s, [[6]])
    clean = attention(q, k, v, cu_seqlens=cu, backend="varlen")
    torch.manual_seed(0)
    mean = torch.stack([attention(q, k, v, cu_seqlens=cu, dropout_p=0.2, backend="varlen")
                        for _ in range(400)]).mean(0)
    assert (mean - clean).abs().mean() < 0.1 * clean.abs().mean()
