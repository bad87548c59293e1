"""Blending indices built by several threads (csrc/blending.cpp) are exactly Megatron's: the same
as the one-output-at-a-time reference and as megatron-core 0.19.2's own C++ helper, whatever the
thread count and however wrong the guessed chunk starts are (``warmup=0`` makes them wrong often,
so the check-and-rebuild path runs)."""
import importlib.metadata
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_th import _C
from megatron_th.data import kernels_ref


def _megatron_helpers():
    """megatron/core/datasets/helpers_cpp (make test installs megatron-core --no-deps; its compiled
    helper needs only pybind11, so it is loaded from its file, without the package's imports)."""
    folder = str(importlib.metadata.distribution("megatron-core").locate_file("megatron/core/datasets"))
    so = [f for f in os.listdir(folder) if f.startswith("helpers_cpp") and f.endswith(".so")]
    if not so:
        pytest.skip("megatron-core's compiled helpers_cpp is not installed")
    spec = importlib.util.spec_from_file_location("helpers_cpp", os.path.join(folder, so[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
       st.integers(0, 3000), st.integers(2, 9), st.sampled_from([0, 1, 5, 4096]))
def test_threads_and_guesses_never_change_the_result(weights, size, threads, warmup):
    w = np.array(weights)
    ref = _C.build_blending_indices(w, size, num_threads=1)  # one thread: Megatron's loop, no guess
    got = _C.build_blending_indices(w, size, num_threads=threads, warmup=warmup)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    if size <= 400:  # and the one-thread kernel is the reference rule (tests/test_kernels.py checks more)
        for a, b in zip(ref, kernels_ref.build_blending_indices(w, size)):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [3, 1, 0, 7, 2, 2, 5, 1, 9, 4, 1]])
def test_identical_to_megatron_core_helper(weights):
    helpers = _megatron_helpers()
    w = np.asarray(weights, dtype=np.float64)
    n = 300_000
    norm = w / sum(w.tolist())  # the weights our kernel normalizes to (summed left to right)
    index, sample = np.zeros(n, dtype=np.int16), np.zeros(n, dtype=np.int64)
    helpers.build_blending_indices(index, sample, norm, len(norm), n, False)
    for threads, warmup in ((1, 4096), (3, 0), (4, 4096), (0, 4096)):
        idx, smp = _C.build_blending_indices(w, n, num_threads=threads, warmup=warmup)
        assert np.array_equal(idx, index) and np.array_equal(smp, sample), (threads, warmup)
