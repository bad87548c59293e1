"""C++ data kernels == numpy references, on hand-worked cases and random inputs (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_th import _C  # C++ is core: a missing build fails here, it is not skipped
from megatron_th.data import kernels, kernels_ref

assert kernels.HAVE_CPP


def test_sample_idx_by_hand():
    sizes = np.array([3, 0, 5, 2], dtype=np.int32)  # stream: d2 d2 d2 d2 d2 | d0 d0 d0 | d3 d3
    doc_idx = np.array([2, 1, 0, 3], dtype=np.int64)
    out = _C.build_sample_idx(sizes, doc_idx, 4, 2)
    # sample 0 = stream[0:5] (all of d2), sample 1 = stream[4:9]; row 2 = stream token 8
    assert out.tolist() == [[0, 0], [0, 4], [3, 0]]
    np.testing.assert_array_equal(out, kernels_ref.build_sample_idx(sizes, doc_idx, 4, 2))
    # an empty first document is skipped; a sample ending exactly at a document end
    out = _C.build_sample_idx(np.array([0, 3, 3], np.int32), np.array([0, 1, 2]), 2, 2)
    assert out.tolist() == [[1, 0], [1, 2], [2, 1]]
    with pytest.raises(ValueError, match="need 9, documents hold 8"):
        _C.build_sample_idx(np.array([8], np.int32), np.array([0]), 4, 2)
    with pytest.raises(ValueError, match="need 9, documents hold 8"):
        kernels_ref.build_sample_idx(np.array([8], np.int32), np.array([0]), 4, 2)
    with pytest.raises(ValueError, match="outside sizes"):
        _C.build_sample_idx(np.array([8], np.int32), np.array([3]), 4, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=40), st.integers(1, 17), st.integers(0, 3),
       st.randoms(use_true_random=False))
def test_sample_idx_matches_reference(sizes, seq_length, epochs_extra, rnd):
    sizes = np.array(sizes, dtype=np.int32)
    order = list(range(len(sizes))) * (1 + epochs_extra)
    rnd.shuffle(order)
    doc_idx = np.array(order, dtype=np.int64)
    total = int(sizes[doc_idx].sum())
    if total < 1:
        return
    n = (total - 1) // seq_length
    a = _C.build_sample_idx(sizes, doc_idx, seq_length, n)
    b = kernels_ref.build_sample_idx(sizes, doc_idx, seq_length, n)
    assert a.dtype == b.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    # and the rows mean what they say: reading the stream reproduces each sample
    stream = np.concatenate([np.full(sizes[d], p, dtype=np.int64) for p, d in enumerate(doc_idx)])
    starts = np.concatenate([[0], np.cumsum(sizes[doc_idx])])
    for i, (p, o) in enumerate(a):
        assert stream[i * seq_length] == p and starts[p] + o == i * seq_length


def test_blending_by_hand_and_errors():
    idx, sample = _C.build_blending_indices(np.array([1.0, 3.0]), 8)
    assert idx.dtype == np.int16 and sample.dtype == np.int64
    assert idx.tolist() == [1, 0, 1, 1, 0, 1, 1, 1]
    assert sample.tolist() == [0, 0, 1, 2, 1, 3, 4, 5]
    for bad in ([], [-1.0, 2.0], [0.0, 0.0], [np.nan]):
        with pytest.raises(ValueError):
            _C.build_blending_indices(np.array(bad, dtype=np.float64), 4)
        with pytest.raises(ValueError):
            kernels_ref.build_blending_indices(np.array(bad, dtype=np.float64), 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=6).filter(lambda w: sum(w) > 0.01),
       st.integers(0, 300))
def test_blending_matches_reference(weights, size):
    w = np.array(weights)
    a = _C.build_blending_indices(w, size)
    b = kernels_ref.build_blending_indices(w, size)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    if size:  # every dataset stays within two samples of its share (max(i, 1) counts step 1 twice)
        counts = np.bincount(a[0], minlength=len(w))
        assert np.all(np.abs(counts - w / w.sum() * size) <= 2 + 1e-9)


def test_packing_by_hand():
    eod = 2
    tokens = np.array([[5, 2, 7, 8, 2, 9], [2, 4, 4, 4, 4, 2]], dtype=np.int64)
    pos, mask, cu = _C.packed_metadata(tokens, eod, True, True)
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    assert mask.tolist() == [[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0]]
    assert cu.dtype == np.int32 and cu.tolist() == [0, 2, 5, 6, 7, 12]
    pos, mask, cu = _C.packed_metadata(tokens, eod, False, False)
    assert pos.tolist() == [list(range(6))] * 2 and mask.min() == 1.0
    assert cu.tolist() == [0, 2, 5, 6, 7, 12]
    with pytest.raises(ValueError, match="non-empty"):
        _C.packed_metadata(np.zeros((2, 0), np.int64), eod, True, True)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.integers(1, 30), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_packing_matches_reference(b, s, reset, mask_eod, seed):
    tokens = np.random.default_rng(seed).integers(0, 4, size=(b, s))
    a = _C.packed_metadata(tokens, 2, reset, mask_eod)
    r = kernels_ref.packed_metadata(tokens, 2, reset, mask_eod)
    for x, y in zip(a, r):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
