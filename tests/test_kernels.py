"""C++ data kernels (megatron_th._C) == numpy references: hand-worked cases, errors, random inputs."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_th import _C  # C++ is core: a missing build makes this module fail, it is never skipped
from megatron_th.data import kernels, kernels_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTH = pytest.mark.parametrize("impl", [_C, kernels_ref], ids=["cpp", "ref"])


def same(a, b):
    """Identical arrays: same dtype, shape and values."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert np.array_equal(a, b), (a, b)


def test_public_entry_points_use_cpp():
    assert kernels.HAVE_CPP is True
    assert kernels.build_sample_idx is _C.build_sample_idx
    assert kernels.build_blending_indices is _C.build_blending_indices
    assert kernels.packed_metadata is _C.packed_metadata
    assert kernels.build_sample_idx_ref is kernels_ref.build_sample_idx_ref is kernels_ref.build_sample_idx
    assert kernels.build_blending_indices_ref is kernels_ref.build_blending_indices
    assert kernels.packed_metadata_ref is kernels_ref.packed_metadata


def test_fallback_warns_once_without_extension():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["megatron_th._C"] = None  # any `import megatron_th._C` now raises ImportError
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from megatron_th.data import kernels, kernels_ref
            import megatron_th.data.kernels  # a second import must not warn again
        msgs = [str(w.message) for w in caught]
        assert len(msgs) == 1 and "megatron_th._C" in msgs[0] and "pip install -e ." in msgs[0], msgs
        assert kernels.HAVE_CPP is False
        assert kernels.build_sample_idx is kernels_ref.build_sample_idx
        assert kernels.packed_metadata is kernels_ref.packed_metadata
        assert kernels.build_blending_indices([1.0], 2)[1].tolist() == [0, 1]
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- sample index
SAMPLE_CASES = [
    # stream: doc 2 (5 tokens) | doc 1 (empty) | doc 0 (3) | doc 3 (2). Sample 0 = stream[0:5] ends
    # on the last token of doc 2, so sample 1 starts there: (0, 4), not (1, 0) or (2, 0).
    (([3, 0, 5, 2], [2, 1, 0, 3], 4, 2), [[0, 0], [0, 4], [3, 0]]),
    # an empty first document is skipped: stream token 0 is token 0 of doc_idx[1]
    (([0, 3, 3], [0, 1, 2], 2, 2), [[1, 0], [1, 2], [2, 1]]),
    # two epochs, every token used: needs 3*3 + 1 = 10 tokens, the stream holds exactly 10
    (([2, 3], [1, 0, 1, 0], 3, 3), [[0, 0], [1, 0], [2, 1], [3, 1]]),
    (([1, 1, 1], [0, 1, 2], 1, 2), [[0, 0], [1, 0], [2, 0]]),
    (([0, 4], [0, 1, 0], 4, 0), [[1, 0]]),
    (([10], [0], 3, 3), [[0, 0], [0, 3], [0, 6], [0, 9]]),
]


@BOTH
@pytest.mark.parametrize("args,expected", SAMPLE_CASES)
def test_sample_idx_by_hand(impl, args, expected):
    sizes, doc_idx, seq_length, n = args
    out = impl.build_sample_idx(np.array(sizes, np.int32), np.array(doc_idx, np.int64), seq_length, n)
    same(out, np.array(expected, dtype=np.int64))


def test_sample_idx_casts_inputs():
    sizes, doc_idx = [3, 0, 5, 2], [2, 1, 0, 3]  # lists, int64 sizes, int32 ids, a strided view
    for s, d in ((sizes, doc_idx), (np.array(sizes, np.int64), np.array(doc_idx, np.int32)),
                 (np.array(sizes * 2, np.int32)[::2], np.array(doc_idx, np.int64))):
        same(_C.build_sample_idx(s, d, 4, 2), kernels_ref.build_sample_idx(s, d, 4, 2))


@BOTH
@pytest.mark.parametrize("args,match", [
    (([8], [0], 4, 2), "not enough tokens: 2 samples of seq_length 4 need 9 tokens, documents hold 8"),
    (([0, 0], [0, 1], 4, 0), "need 1 tokens, documents hold 0"),
    (([5], [], 1, 0), "documents hold 0"),
    (([8], [3], 4, 1), r"doc_idx\[0\] = 3 is outside sizes \(1 documents\)"),
    (([8], [0, -1], 4, 1), r"doc_idx\[1\] = -1 is outside sizes"),
    (([8, -2], [0], 4, 1), r"sizes\[1\] is negative \(-2\)"),
    (([8], [0], 0, 1), "seq_length must be positive"),
    (([8], [0], 4, -1), "num_samples must be >= 0"),
    (([8], [0], 2**40, 2**40), "overflows int64"),
    (([[8]], [0], 4, 1), "sizes must be a 1-D array, got ndim=2"),
    (([8], 0, 4, 1), "doc_idx must be a 1-D array, got ndim=0"),
])
def test_sample_idx_errors(impl, args, match):
    sizes, doc_idx, seq_length, n = args
    with pytest.raises(ValueError, match=match):
        impl.build_sample_idx(np.array(sizes, np.int32), np.array(doc_idx, np.int64), seq_length, n)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=40), st.integers(1, 17), st.integers(1, 3),
       st.randoms(use_true_random=False), st.data())
def test_sample_idx_matches_reference_and_stream(sizes, seq_length, epochs, rnd, data):
    sizes = np.array(sizes, dtype=np.int32)
    order = list(range(len(sizes))) * epochs
    rnd.shuffle(order)
    doc_idx = np.array(order, dtype=np.int64)
    total = int(sizes[doc_idx].sum())
    if total == 0:
        for impl in (_C, kernels_ref):
            with pytest.raises(ValueError, match="not enough tokens"):
                impl.build_sample_idx(sizes, doc_idx, seq_length, 0)
        return
    most = (total - 1) // seq_length
    n = data.draw(st.integers(0, most))
    out = _C.build_sample_idx(sizes, doc_idx, seq_length, n)
    same(out, kernels_ref.build_sample_idx(sizes, doc_idx, seq_length, n))
    assert out.shape == (n + 1, 2)
    for impl in (_C, kernels_ref):
        with pytest.raises(ValueError, match="not enough tokens"):
            impl.build_sample_idx(sizes, doc_idx, seq_length, most + 1)
    # The rows mean what they say: each points at a real token, and reading sample i from row i
    # to row i+1 (inclusive) like the dataset does gives stream tokens [i*L, i*L + L].
    docs = [np.arange(int(sizes[d]), dtype=np.int64) + 1000 * p for p, d in enumerate(doc_idx)]
    stream = np.concatenate(docs)
    assert all(0 <= o < len(docs[p]) for p, o in out)
    for i in range(n):
        (p0, o0), (p1, o1) = out[i], out[i + 1]
        got = docs[p0][o0:o1 + 1] if p0 == p1 else np.concatenate(
            [docs[p0][o0:], *docs[p0 + 1:p1], docs[p1][:o1 + 1]])
        assert np.array_equal(got, stream[i * seq_length:i * seq_length + seq_length + 1])


# ---------------------------------------------------------------- blending
@BOTH
@pytest.mark.parametrize("weights,size,index,sample", [
    ([1.0, 3.0], 8, [1, 0, 1, 1, 0, 1, 1, 1], [0, 0, 1, 2, 1, 3, 4, 5]),
    ([0.25, 0.75], 8, [1, 0, 1, 1, 0, 1, 1, 1], [0, 0, 1, 2, 1, 3, 4, 5]),  # already normalised
    ([1.0, 1.0, 1.0], 6, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]),
    ([2.0], 3, [0, 0, 0], [0, 1, 2]),
    ([0.5, 0.5], 0, [], []),
    # the greedy rule taken literally: at i=1 a zero-weight dataset ties (0*1 - 0 == 1*1 - 1) and
    # wins as the lower index, so it gets exactly one sample
    ([0.0, 1.0], 5, [1, 0, 1, 1, 1], [0, 0, 1, 2, 3]),
])
def test_blending_by_hand(impl, weights, size, index, sample):
    idx, smp = impl.build_blending_indices(np.array(weights), size)
    same(idx, np.array(index, dtype=np.int16))
    same(smp, np.array(sample, dtype=np.int64))


def test_blending_shares_and_casts():
    idx, _ = _C.build_blending_indices([5, 3, 2], 1000)  # integer list is cast to float64
    assert np.bincount(idx).tolist() == [500, 300, 200]
    for a, b in zip(_C.build_blending_indices(np.arange(1, 41, dtype=np.float32), 500),
                    kernels_ref.build_blending_indices(np.arange(1, 41, dtype=np.float32), 500)):
        same(a, b)


@BOTH
@pytest.mark.parametrize("weights,size,match", [
    ([], 4, "need 1..32767 blending weights, got 0"),
    (np.ones(32768), 4, "need 1..32767 blending weights, got 32768"),
    ([-1.0, 2.0], 4, "finite and non-negative"),
    ([np.nan, 1.0], 4, "finite and non-negative"),
    ([np.inf], 4, "finite and non-negative"),
    ([0.0, 0.0], 4, "positive sum"),
    ([1e308, 1e308], 4, "positive sum"),
    ([[0.5, 0.5]], 4, "weights must be a 1-D array, got ndim=2"),
    ([1.0], -1, "size must be >= 0"),
])
def test_blending_errors(impl, weights, size, match):
    with pytest.raises(ValueError, match=match):
        impl.build_blending_indices(np.array(weights, dtype=np.float64), size)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=1, max_size=40)
       .filter(lambda w: sum(w) > 0), st.integers(0, 300))
def test_blending_matches_reference(weights, size):
    w = np.array(weights)
    idx, smp = _C.build_blending_indices(w, size)
    ref_idx, ref_smp = kernels_ref.build_blending_indices(w, size)
    same(idx, ref_idx)
    same(smp, ref_smp)
    for d in range(len(w)):  # each dataset's samples are taken in order 0, 1, 2, ...
        assert smp[idx == d].tolist() == list(range(int(np.sum(idx == d))))


# ---------------------------------------------------------------- packed sequences
TOKENS = np.array([[5, 2, 7, 8, 2, 9], [2, 4, 4, 4, 4, 2]], dtype=np.int64)


@BOTH
@pytest.mark.parametrize("tokens,reset,mask_eod,pos,mask,cu", [
    # row 0: EODs at 1 and 4 end documents [0:2] [2:5] [5:6]; row 1: EOD at 0, EOD at the row's end
    (TOKENS, True, True, [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]],
     [[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0]], [0, 2, 5, 6, 7, 12]),
    (TOKENS, False, False, [list(range(6))] * 2, [[1] * 6] * 2, [0, 2, 5, 6, 7, 12]),
    (TOKENS, True, False, [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]], [[1] * 6] * 2, [0, 2, 5, 6, 7, 12]),
    (np.full((3, 4), 7), True, True, [[0, 1, 2, 3]] * 3, [[1] * 4] * 3, [0, 4, 8, 12]),  # no EOD
    ([[2, 2, 2]], True, True, [[0, 0, 0]], [[0, 0, 0]], [0, 1, 2, 3]),
    ([[2], [3]], True, True, [[0], [0]], [[0], [1]], [0, 1, 2]),
])
def test_packing_by_hand(impl, tokens, reset, mask_eod, pos, mask, cu):
    p, m, c = impl.packed_metadata(np.array(tokens, dtype=np.int64), 2, reset, mask_eod)
    same(p, np.array(pos, dtype=np.int64))
    same(m, np.array(mask, dtype=np.float32))
    same(c, np.array(cu, dtype=np.int32))


@BOTH
@pytest.mark.parametrize("tokens,match", [
    (np.zeros((2, 0), np.int64), "non-empty rows"),
    (np.zeros(5, np.int64), "tokens must be a 2-D array, got ndim=1"),
    (np.zeros((1, 2, 3), np.int64), "tokens must be a 2-D array, got ndim=3"),
])
def test_packing_errors(impl, tokens, match):
    with pytest.raises(ValueError, match=match):
        impl.packed_metadata(tokens, 2, True, True)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.integers(1, 30), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1),
       st.sampled_from([np.int64, np.int32, np.uint16]))
def test_packing_matches_reference(b, s, reset, mask_eod, seed, dtype):
    tokens = np.random.default_rng(seed).integers(0, 4, size=(b, s)).astype(dtype)
    got = _C.packed_metadata(tokens, 2, reset, mask_eod)
    for x, y in zip(got, kernels_ref.packed_metadata(tokens, 2, reset, mask_eod)):
        same(x, y)
    cu = got[2]
    assert cu[0] == 0 and cu[-1] == b * s and np.all(np.diff(cu) > 0)
