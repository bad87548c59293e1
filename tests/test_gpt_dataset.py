"""Samples, splits, epochs, caching, blending and the DP-sliced loader."""
import multiprocessing as mp
import os

import numpy as np
import pytest

from megatron_th.data.gpt_dataset import (BlendedDataset, GPTDataset, build_datasets, parse_data_path,
                                          parse_split, split_ranges)
from megatron_th.data.indexed import IndexedDataset, IndexedDatasetBuilder
from megatron_th.data.loader import PretrainingLoader

EOD = 2


def make_data(prefix, n_docs=60, seed=0, lo=1, hi=80, offset=10):
    rng = np.random.default_rng(seed)
    docs = []
    with IndexedDatasetBuilder(prefix) as b:
        for _ in range(n_docs):
            d = np.append(rng.integers(offset, offset + 1000, size=rng.integers(lo, hi)), EOD)
            b.add_document(d)
            docs.append(d)
    return IndexedDataset(prefix), docs


@pytest.fixture
def data(tmp_path):
    return make_data(str(tmp_path / "a"))


def test_split_ranges():
    assert split_ranges(1000, "949,50,1") == [(0, 949), (949, 999), (999, 1000)]
    assert split_ranges(10, "949,50,1") == [(0, 10), (10, 10), (10, 10)]
    assert split_ranges(7, "1") == [(0, 7), (7, 7), (7, 7)]
    assert parse_split("98,2,0") == [0.98, 0.02, 0.0]
    with pytest.raises(ValueError, match="--split"):
        parse_split("a,b")
    assert parse_data_path(["0.3", "x", "0.7", "y"]) == [(0.3, "x"), (0.7, "y")]
    assert parse_data_path(["x", "y"]) == [(None, "x"), (None, "y")]
    with pytest.raises(ValueError, match="--data-path"):
        parse_data_path(["0.3", "x", "y"])


def test_samples_are_windows_of_the_shuffled_stream(data, tmp_path):
    indexed, docs = data
    ds = GPTDataset(indexed, 0, (5, 50), seq_length=32, seed=7, num_samples=200, cache_dir=str(tmp_path / "c"))
    n = 45
    for e in range(ds.num_epochs):  # every epoch is a permutation of the split's documents
        assert sorted(ds.index.doc_idx[e * n:(e + 1) * n]) == list(range(5, 50))
    assert ds.num_epochs >= 2
    assert not np.array_equal(ds.index.doc_idx[:n], ds.index.doc_idx[n:2 * n])
    stream = np.concatenate([docs[d] for d in ds.index.doc_idx])
    seen = set()
    for i in range(200):
        r = int(ds.index.shuffle_idx[i])
        seen.add(r)
        np.testing.assert_array_equal(ds[i], stream[r * 32: r * 32 + 33])
    assert len(seen) == 200 and ds[0].dtype == np.int64
    with pytest.raises(IndexError):
        ds[200]


def test_order_does_not_depend_on_requested_count(data, tmp_path):
    indexed, _ = data
    small = GPTDataset(indexed, 0, (0, 60), 16, 3, 10, str(tmp_path / "c"))
    big = GPTDataset(indexed, 0, (0, 60), 16, 3, 5000, str(tmp_path / "c"))
    assert big.num_epochs > small.num_epochs
    for i in range(10):
        np.testing.assert_array_equal(small[i], big[i])
    other_seed = GPTDataset(indexed, 0, (0, 60), 16, 4, 10, str(tmp_path / "c"))
    assert any(not np.array_equal(small[i], other_seed[i]) for i in range(10))


def _build_in_child(args):
    prefix, cache = args
    ds = GPTDataset(IndexedDataset(prefix), 0, (0, 60), 16, 1, 300, cache)
    return [ds[i].tolist() for i in range(0, 300, 37)]


def test_index_cache_built_once_under_lock(data, tmp_path):
    indexed, _ = data
    cache = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(3) as pool:
        results = pool.map(_build_in_child, [(indexed.prefix, cache)] * 3)
    assert results[0] == results[1] == results[2]
    npy = sorted(f for f in os.listdir(cache) if f.endswith(".npy"))
    assert len(npy) == 3 and not any(f.endswith(".tmp") for f in os.listdir(cache))
    mtimes = [os.path.getmtime(os.path.join(cache, f)) for f in npy]
    again = GPTDataset(indexed, 0, (0, 60), 16, 1, 300, cache)  # loads, does not rebuild
    assert [os.path.getmtime(os.path.join(cache, f)) for f in npy] == mtimes
    assert [again[i].tolist() for i in range(0, 300, 37)] == results[0]


def test_blending_shares_and_independence(tmp_path):
    a, _ = make_data(str(tmp_path / "a"), seed=1, offset=10)
    b, _ = make_data(str(tmp_path / "b"), seed=2, offset=5000)
    make = lambda n: BlendedDataset(  # noqa: E731
        [0.25, 0.75], n, lambda d, k: GPTDataset([a, b][d], 0, (0, 60), 8, 0, k, str(tmp_path / "c")))
    small, big = make(40), make(400)
    assert np.bincount(big.dataset_index).tolist() == [100, 300]
    for i in range(40):
        np.testing.assert_array_equal(small[i], big[i])
        src = big.source(i)
        assert (big[i][big[i] != EOD] >= 5000).all() == (src == 1)


def test_build_datasets_tiny_corpus_reports_empty_split(tmp_path):
    make_data(str(tmp_path / "a"), n_docs=8)
    notes = []
    out = build_datasets([str(tmp_path / "a")], "949,50,1", 16, 0,
                         {"train": 20, "valid": 8, "test": 0}, str(tmp_path / "c"), log=notes.append)
    assert len(out["train"]) == 20 and out["valid"] is None and out["test"] is None
    assert notes == ["note: the valid split of --split 949,50,1 gets no documents; it is skipped"]


def test_loader_union_over_dp_ranks_and_resume(data, tmp_path):
    indexed, _ = data
    ds = GPTDataset(indexed, 0, (0, 60), 16, 0, 96, str(tmp_path / "c"))
    full = [np.concatenate([mb["tokens"].numpy() for mb in gb])
            for gb in PretrainingLoader(ds, 8, 2, EOD)]
    assert len(full) == 12 and full[0].shape == (8, 16)
    for dp in (2, 4):
        loaders = [PretrainingLoader(ds, 8, 2, EOD, dp_rank=r, dp_size=dp) for r in range(dp)]
        for k in range(12):
            parts = [np.concatenate([mb["tokens"].numpy() for mb in ld.next_global_batch()]) for ld in loaders]
            np.testing.assert_array_equal(np.concatenate(parts), full[k])
    resumed = PretrainingLoader(ds, 8, 2, EOD, dp_rank=1, dp_size=2, consumed_samples=40)
    first = np.concatenate([mb["tokens"].numpy() for mb in resumed.next_global_batch()])
    np.testing.assert_array_equal(first, full[5][4:])
    with pytest.raises(ValueError, match="--global-batch-size 8 is not divisible"):
        PretrainingLoader(ds, 8, 3, EOD, dp_size=2)


def test_batch_fields(data, tmp_path):
    indexed, _ = data
    ds = GPTDataset(indexed, 0, (0, 60), 64, 0, 8, str(tmp_path / "c"))
    ld = PretrainingLoader(ds, 4, 4, EOD, reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)
    mb = ld.next_global_batch()[0]
    x = np.stack([ds[i] for i in range(4)])
    np.testing.assert_array_equal(mb["tokens"].numpy(), x[:, :-1])
    np.testing.assert_array_equal(mb["labels"].numpy(), x[:, 1:])
    tok = x[:, :-1]
    assert ((mb["loss_mask"].numpy() == 0) == (tok == EOD)).all()
    for r in range(4):
        pos = mb["position_ids"][r].numpy()
        for j in range(1, 64):
            assert pos[j] == (0 if tok[r, j - 1] == EOD else pos[j - 1] + 1)
    cu = mb["cu_seqlens"].numpy()
    assert cu[0] == 0 and cu[-1] == 4 * 64 and (np.diff(cu) > 0).all()
    assert set(range(0, 257, 64)) <= set(cu.tolist())
    plain = PretrainingLoader(ds, 4, 4, EOD).next_global_batch()[0]
    assert "cu_seqlens" not in plain and (plain["loss_mask"] == 1).all()
    assert (plain["position_ids"] == np.arange(64)).all()
