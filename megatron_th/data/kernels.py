"""The data kernels: C++ (``megatron_th._C``, built by ``pip install -e .``) with a numpy fallback.

The fallback keeps a source checkout usable before the extension is built; it is much slower
(the sample index and blending above all) and warns once, at import. ``HAVE_CPP`` says which
one is in use. Tests require the C++ module. The numpy references are always available as
``kernels_ref.build_sample_idx`` (alias ``build_sample_idx_ref``) etc., and re-exported here.
"""
from __future__ import annotations

import warnings

from megatron_th.data import kernels_ref
from megatron_th.data.kernels_ref import (  # noqa: F401  (re-exported)
    best_fit_decreasing_ref,
    build_blending_indices_ref,
    build_sample_idx_ref,
    packed_metadata_ref,
)

__all__ = ["HAVE_CPP", "build_sample_idx", "build_blending_indices", "packed_metadata", "best_fit_decreasing",
           "build_sample_idx_ref", "build_blending_indices_ref", "packed_metadata_ref", "best_fit_decreasing_ref"]

try:
    from megatron_th import _C

    build_sample_idx = _C.build_sample_idx
    build_blending_indices = _C.build_blending_indices
    packed_metadata = _C.packed_metadata
    best_fit_decreasing = _C.best_fit_decreasing
    HAVE_CPP = True
except (ImportError, AttributeError) as e:  # missing, stale or ABI-incompatible build
    HAVE_CPP = False
    warnings.warn(f"megatron_th._C is unavailable ({type(e).__name__}: {e}); using the slower numpy "
                  "data kernels. Build the C++ extension with `pip install -e .` (or "
                  "`python setup.py build_ext --inplace`) from the repository root.",
                  RuntimeWarning, stacklevel=2)
    build_sample_idx = kernels_ref.build_sample_idx
    build_blending_indices = kernels_ref.build_blending_indices
    packed_metadata = kernels_ref.packed_metadata
    best_fit_decreasing = kernels_ref.best_fit_decreasing
