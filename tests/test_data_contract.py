"""Issue 14, cases 3 (training half) and 4: empty or unusable data and the data-to-model contract
are one `error:` line before the model is built, never a traceback or a meaningless loss; the .idx
layout is read as megatron-core's IndexedDataset/GPTDataset read it."""
import glob
import os
import struct

import numpy as np
import pytest

from megatron_th.config import ConfigError
from megatron_th.data import gpt_dataset
from megatron_th.data.gpt_dataset import build_datasets
from megatron_th.data.indexed import HEADER, IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
from megatron_th.training.pretrain import main

BASE = ["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16",
        "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "1", "--num-threads", "1"]


def _build(prefix, docs, dtype=np.uint16):
    with IndexedDatasetBuilder(prefix, dtype) as b:
        for d in docs:
            b.add_document(d)
    return str(prefix)


def _docs(n=20, hi=300, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, hi, size=int(rng.integers(5, 40))) for _ in range(n)]


def _pretrain_error(capsys, prefix, tmp_path, *extra):
    """rc and the single stderr line of pretrain's main (no traceback: an exception fails the test)."""
    rc = main(BASE + ["--data-path", prefix, "--data-cache-path", str(tmp_path / "cache"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return rc, err[0]


def test_empty_or_unusable_data_is_one_error_naming_data_path_and_split(tmp_path, capsys):
    """Case 3: 0 documents (preprocessing matched no key) used to die with `TypeError: object of type
    'NoneType' has no len()`; a --split that leaves the train split nothing did the same."""
    empty = _build(tmp_path / "empty", [])
    rc, err = _pretrain_error(capsys, empty, tmp_path)
    assert rc == 2 and err.startswith(f"error: --data-path {empty}: the dataset holds no tokens (0 sequences")
    only_empty_docs = _build(tmp_path / "blank", [[], []])
    rc, err = _pretrain_error(capsys, only_empty_docs, tmp_path)
    assert rc == 2 and f"--data-path {only_empty_docs}: the dataset holds no tokens" in err
    good = _build(tmp_path / "good", _docs())
    rc, err = _pretrain_error(capsys, good, tmp_path, "--split", "0,1,0")
    assert rc == 2 and err.startswith(f"error: --split 0,1,0 gives the train split 0 of the 20 documents of "
                                      f"--data-path {good}")
    # a blend: a weighted dataset whose train split is empty is not silently dropped from the blend
    tiny = _build(tmp_path / "tiny", [[7], [8, 9]])
    with pytest.raises(ConfigError, match=f"--split 1,1,0 gives the train split 1 of the 2 documents of "
                                          f"--data-path {tiny} \\(1 tokens; a sample needs at least 2\\)"):
        build_datasets(["0.5", good, "0.5", tiny], "1,1,0", 16, 0, {"train": 4}, str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "c")  # refused before any index was built


def test_token_ids_outside_the_vocabulary_are_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    """Case 4: ids >= the vocabulary (the default tokenizer has 8000 pieces) used to give an IndexError
    naming no file at TP=1 (a zero embedding and a meaningless loss at TP=2)."""
    docs = _docs()
    docs[7] = np.append(docs[7], 9000)
    big = _build(tmp_path / "big", docs)
    rc, err = _pretrain_error(capsys, big, tmp_path)
    assert rc == 2 and err.startswith(f"error: --data-path {big}: largest token id 9000 is outside the vocabulary "
                                      f"of the default tokenizer ")
    assert "(8000 pieces, ids 0..7999)" in err and "uint16 ids" in err
    # the largest id is computed once and cached with the index cache: a second run reads the cache
    cached = glob.glob(str(tmp_path / "cache" / "big_tokens_*.json"))
    assert len(cached) == 1
    monkeypatch.setattr(IndexedDataset, "token_range", lambda self: pytest.fail("rescanned the .bin"))
    rc, err2 = _pretrain_error(capsys, big, tmp_path)
    assert rc == 2 and err2 == err
    monkeypatch.undo()
    # negative ids (a signed dtype) and non-integer token dtypes break the same contract
    neg = _build(tmp_path / "neg", [[5, 6, -3, 7]], np.int32)
    with pytest.raises(ConfigError, match=f"--data-path {neg}: holds the negative token id -3"):
        build_datasets([neg], "1", 2, 0, {"train": 1}, str(tmp_path / "c"), vocab_size=8000)
    flt = _build(tmp_path / "flt", [[5.0, 6.0, 7.0]], np.float32)
    with pytest.raises(ConfigError, match=f"--data-path {flt}: tokens are stored as float32"):
        build_datasets([flt], "1", 2, 0, {"train": 1}, str(tmp_path / "c"), vocab_size=8000)
    # ids inside the vocabulary pass, whatever the dtype
    ok = _build(tmp_path / "ok", [[0, 7999, 5]], np.int32)
    assert len(build_datasets([ok], "1", 2, 0, {"train": 1}, str(tmp_path / "c"), vocab_size=8000)["train"]) == 1


def _idx_fields(prefix):
    raw = bytearray(open(f"{prefix}.idx", "rb").read())
    _, _, _, n_seq, n_doc = HEADER.unpack(bytes(raw[:HEADER.size]))
    ptr_off = HEADER.size + 4 * n_seq
    return raw, n_seq, ptr_off


@pytest.mark.parametrize("damage", ["pointer_overlaps", "negative_pointer", "dtype_code_uint8"])
def test_idx_layout_megatron_cannot_read_is_refused_naming_the_file(tmp_path, capsys, damage):
    """Pointers must be the back-to-back layout of the lengths at the dtype's size (what every Megatron
    writer produces); before, these were accepted and read wrong or failed at the first sample."""
    prefix = _build(tmp_path / "ds", [[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    raw, n_seq, ptr_off = _idx_fields(prefix)
    if damage == "pointer_overlaps":
        raw[ptr_off + 8:ptr_off + 16] = struct.pack("<q", 2)
    elif damage == "negative_pointer":
        raw[ptr_off:ptr_off + 8] = struct.pack("<q", -4)
    else:
        raw[17] = 1  # uint8: the pointers were written for 2-byte tokens
    open(f"{prefix}.idx", "wb").write(bytes(raw))
    with pytest.raises(IndexedDatasetError, match=rf"{prefix}\.idx: sequence [01] points at byte"):
        IndexedDataset(prefix)
    rc, err = _pretrain_error(capsys, prefix, tmp_path)
    assert rc == 2 and err.startswith(f"error: --data-path {prefix}: {prefix}.idx: sequence")


def test_gpt_split_is_over_sequences_as_megatron_samples_them(tmp_path):
    """megatron-core's GPTDataset splits and samples by sequence (numel_low_level_dataset), not by the
    document index: a dataset of multi-sequence documents (--split-sentences) is sampled whole."""
    prefix = tmp_path / "sent"
    with IndexedDatasetBuilder(prefix) as b:
        for doc in range(2):
            for s in range(5):
                b.add_item(np.full(4, 100 * doc + s + 10))
            b.end_document()
    ds = build_datasets([str(prefix)], "1", 4, 0, {"train": 10}, str(tmp_path / "c"))["train"]
    seen = set(np.concatenate([ds[i] for i in range(len(ds))]).tolist())
    assert seen == {10, 11, 12, 13, 14, 110, 111, 112, 113, 114}
    assert gpt_dataset.split_ranges(len(IndexedDataset(prefix)), "1") == [(0, 10), (10, 10), (10, 10)]
