"""Byte compatibility with Megatron-LM itself: megatron-core's own reader and builder (installed
by `make test` with --no-deps; its package imports need triton, so only the indexed-dataset module
is loaded, with two of its helper modules replaced by minimal shims)."""
import importlib.metadata
import os
import sys
import types

import numpy as np
import pytest
import torch

from megatron_th.data.indexed import IndexedDataset, IndexedDatasetBuilder


@pytest.fixture(scope="module")
def mcore():
    dist = importlib.metadata.distribution("megatron-core")  # make test installs it: never skipped
    root = str(dist.locate_file("megatron"))
    shims = {
        "megatron.core.utils": {"log_single_rank": lambda logger, level, msg, *a, **k: logger.log(level, msg)},
        "megatron.core.msc_utils": {
            "MultiStorageClientFeature": type("MSC", (), {"is_enabled": staticmethod(lambda: False)}),
            "maybe_msc": types.SimpleNamespace(open=open)},
    }
    saved = {k: sys.modules.get(k) for k in ["megatron", "megatron.core", "megatron.core.datasets", *shims]}
    for pkg, sub in (("megatron", ""), ("megatron.core", "core"), ("megatron.core.datasets", "core/datasets")):
        m = types.ModuleType(pkg)
        m.__path__ = [os.path.join(root, sub)]
        sys.modules[pkg] = m
    for name, attrs in shims.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
    import megatron.core.datasets.indexed_dataset as mi

    yield mi
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    sys.modules.pop("megatron.core.datasets.indexed_dataset", None)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_reads_ours_and_we_read_theirs_byte_identical(tmp_path, mcore, dtype):
    rng = np.random.default_rng(0)
    hi = 8000 if dtype == np.uint16 else 100_000
    docs = [rng.integers(0, hi, size=n) for n in (5, 1, 300, 17, 2)]
    with IndexedDatasetBuilder(tmp_path / "ours", dtype) as b:
        for d in docs:
            b.add_document(d)
    theirs = mcore.IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == len(docs)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(theirs[i], d)
    mb = mcore.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for d in docs:
        mb.add_item(torch.tensor(d))
        mb.end_document()
    mb.finalize(str(tmp_path / "theirs.idx"))
    ours = IndexedDataset(tmp_path / "theirs")
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ours[i], d)
    for ext in ("idx", "bin"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes()
    del theirs
