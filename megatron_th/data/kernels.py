"""The data kernels: C++ (``megatron_th._C``, built at install time) with a numpy fallback.

The fallback exists so a source checkout still works before ``pip install -e .``; it is slower
(the sample index by far) and warns once. Tests require the C++ module.
"""
from __future__ import annotations

import warnings

from megatron_th.data import kernels_ref

try:
    from megatron_th import _C

    HAVE_CPP = True
    build_sample_idx = _C.build_sample_idx
    build_blending_indices = _C.build_blending_indices
    packed_metadata = _C.packed_metadata
except ImportError as e:  # pragma: no cover - exercised only without a build
    HAVE_CPP = False
    warnings.warn(f"megatron_th._C is not built ({e}); using the slower numpy data kernels. "
                  "Build it with `pip install -e .`", stacklevel=2)
    build_sample_idx = kernels_ref.build_sample_idx
    build_blending_indices = kernels_ref.build_blending_indices
    packed_metadata = kernels_ref.packed_metadata
