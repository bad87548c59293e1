"""data/prefetch.py: the next global batch built in a background thread gives the loader's batches,
in its order and with its consumed_samples (also after a resume), drops the keys a pipeline stage
never reads while keeping the packing metadata, surfaces a worker's error at the call that wants
that batch, and leaves no thread behind."""
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_th.data.loader import FullPassLoader, PretrainingLoader
from megatron_th.data.packing import make_batch
from megatron_th.data.prefetch import Prefetcher

EOD, SEQ = 0, 16
PACK = dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)


class Samples:
    """Sample i: seq+1 tokens with EODs at i-dependent places (several documents per row).
    ``fail``: index whose read raises; ``gate`` (first, entered, go): a read of an index >= first
    sets ``entered`` and waits for ``go``."""

    def __init__(self, n=48, fail=None, gate=None):
        self.n, self.fail, self.gate = n, fail, gate

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail:
            raise ValueError(f"sample {i}: corrupt record in shard 3")
        if self.gate is not None and i >= self.gate[0]:
            self.gate[1].set()
            self.gate[2].wait()
        x = np.random.default_rng(i).integers(1, 50, SEQ + 1)
        x[[i % 7 + 1, i % 5 + 9]] = EOD
        return x


def _loader(ds, consumed=0, dp_rank=1):
    return PretrainingLoader(ds, 8, 2, EOD, dp_rank=dp_rank, dp_size=2, consumed_samples=consumed, **PACK)


def _alive():
    return [t for t in threading.enumerate() if t.name == "megatron_th-prefetch"]


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for k in w:
            assert torch.equal(g[k], w[k]), k


def test_prefetched_batches_equal_the_loaders_across_a_resume():
    ds = Samples()
    plain = _loader(ds)
    want = [(plain.next_global_batch(), plain.consumed_samples) for _ in range(5)]
    assert "cu_seqlens" in want[0][0][0]
    with Prefetcher(_loader(ds), batches=3) as loader:
        for batch, consumed in want[:3]:
            _same(loader.next_global_batch(), batch)
            assert loader.consumed_samples == consumed  # what a checkpoint saves: the batches handed out
        assert not loader.has_next() and not _alive()  # nothing built past the last batch of the run
    # resumed at the checkpoint's consumed_samples: the same next batches
    with Prefetcher(_loader(ds, consumed=want[2][1])) as loader:
        for batch, consumed in want[3:]:
            _same(loader.next_global_batch(), batch)
            assert loader.consumed_samples == consumed
        assert list(loader.rank_sample_ids(0)) == list(plain.rank_sample_ids(0))  # the loader's own methods
    # a middle pipeline stage: no tokens or labels, the same packing metadata and loss mask
    with Prefetcher(_loader(ds), drop_keys={"tokens", "labels"}) as loader:
        got = loader.next_global_batch()
    _same(got, [{k: v for k, v in mb.items() if k not in ("tokens", "labels")} for mb in want[0][0]])
    # FullPassLoader (--full-validation): every sample once, the last batch padded
    full = lambda: FullPassLoader([ds], 16, 2, lambda s: make_batch(np.stack(s), EOD, **PACK), 0, 2)  # noqa: E731
    plain = full()
    with Prefetcher(full()) as loader:
        for _ in range(len(plain)):
            _same(loader.next_global_batch(), plain.next_global_batch())
        assert not loader.has_next()
    assert not _alive()


def test_worker_errors_surface_and_no_thread_outlives_the_loader():
    loader = Prefetcher(_loader(Samples(fail=17), dp_rank=0))  # its part of batch 2: samples 16..19
    loader.next_global_batch()
    loader.next_global_batch()  # batch 2 is being built and fails in the background
    with pytest.raises(ValueError, match=r"^sample 17: corrupt record in shard 3$"):
        loader.next_global_batch()
    assert not _alive()
    # the run stops (any exception) while a batch is being built: leaving the block joins the thread
    entered, go = threading.Event(), threading.Event()
    with pytest.raises(RuntimeError, match="step failed"):
        with Prefetcher(_loader(Samples(gate=(8, entered, go)), dp_rank=0)) as loader:
            loader.next_global_batch()
            try:
                entered.wait()  # batch 2 is being built: the wrapped loader has counted it already
                assert (loader.consumed_samples, loader.loader.consumed_samples) == (8, 16)
                assert len(_alive()) == 1
            finally:
                go.set()
            raise RuntimeError("step failed")
    assert not _alive()


def test_stage_inputs_and_model_inputs_without_tokens():
    from megatron_th.training.step import model_inputs, unused_inputs

    stage = lambda first, last: SimpleNamespace(is_first_stage=first, is_last_stage=last)  # noqa: E731
    assert unused_inputs(stage(True, True)) == set()
    assert unused_inputs(stage(True, False)) == {"labels"}
    assert unused_inputs(stage(False, True)) == {"tokens"}
    assert unused_inputs(stage(False, False)) == {"tokens", "labels"}
    with Prefetcher(_loader(Samples()), drop_keys=unused_inputs(stage(False, False))) as loader:
        mb = loader.next_global_batch()[0]
    inputs = model_inputs(mb, "cpu")
    assert sorted(inputs) == ["documents", "position_ids"]
    assert (inputs["documents"].batch, inputs["documents"].seq) == (2, SEQ)
    assert inputs["documents"].bounds == tuple(mb["cu_seqlens"].tolist())
