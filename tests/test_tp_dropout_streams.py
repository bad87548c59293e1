"""Sharded-dropout (TP) RNG streams: one per (virtual pipeline stage, TP rank), all checkpointed.

Before: every pipeline stage and virtual chunk of a TP rank drew the same masks (seed + 2718 +
tp_rank), and only the first chunk's stream was saved, so an interleaved TP run with dropout did
not resume bitwise.
"""
import os
import shutil

import numpy as np
import torch

from tests import dist as D
from tests.test_tensor_parallel import _data, argv

INTERLEAVED = ["--num-layers", "4", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
               "--num-layers-per-virtual-pipeline-stage", "1", "--sequence-parallel", "--micro-batch-size", "1",
               "--global-batch-size", "2",
               "--hidden-dropout", "0.2", "--attention-dropout", "0.2"]


def _chunks(rank, tp=2, pp=2):
    """This rank's model chunks at TP 2 x PP 2 x v 2 (built without process groups: no forward)."""
    from megatron_th.config import finalize, parse_config
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.stages import build_chunks

    cfg, _ = parse_config(["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
                           "--seq-length", "16", "--tensor-model-parallel-size", str(tp),
                           "--pipeline-model-parallel-size", str(pp), "--num-layers-per-virtual-pipeline-stage", "1",
                           "--global-batch-size", "4", "--micro-batch-size", "1", "--attention-dropout", "0.5"])
    finalize(cfg, tp * pp)
    groups = ParallelGroups(tp, pp, 1, rank, np.arange(tp * pp).reshape(pp, 1, tp))
    return build_chunks(cfg, 300, groups, "cpu", torch.float32), groups


def _mask(rng):
    with rng.fork():
        return tuple((torch.rand(64) < 0.5).tolist())


def test_stages_and_chunks_draw_distinct_masks_and_all_streams_are_saved_and_restored():
    from megatron_th.training.resume import load_state, rng_tensors

    masks = {}
    for rank in range(4):  # grid[pp, 0, tp] = 2 * pp + tp
        core, groups = _chunks(rank)
        assert len(core.tp_rngs) == 2
        for c, rng in enumerate(core.tp_rngs):
            masks[(groups.pp_rank, c, groups.tp_rank)] = _mask(rng)
    assert len(set(masks.values())) == len(masks) == 8  # every (stage, chunk, TP rank) its own masks

    # saved: one stream per chunk; restored: every chunk's
    core, groups = _chunks(3)
    names = [n for n, *_ in rng_tensors(3, core)]
    assert names == ["rng.3.cpu", "rng.3.tp.0", "rng.3.tp.1"]
    saved = {n: t.clone() for n, t, *_ in rng_tensors(3, core)}
    drawn = [_mask(r) for r in core.tp_rngs]  # advances both streams

    class Reader:
        path, tensors = "mem", saved
        meta = {"layout": {"tp": 2, "pp": 2, "dp": 1}}

        def read(self, name, *a):
            return self.tensors[name].clone()

    class Streams:  # the RNG part of the model only (no weights to read)
        tp_rngs, tp_rng = core.tp_rngs, core.tp_rng
        named_parameters = parameters = staticmethod(lambda: iter(()))

    load_state(Reader(), Streams(), None, groups)
    assert [_mask(r) for r in core.tp_rngs] == drawn
    # a checkpoint from before per-chunk streams (one "rng.<rank>.tp") still restores chunk 0
    Reader.tensors = {"rng.3.cpu": saved["rng.3.cpu"], "rng.3.tp": saved["rng.3.tp.0"]}
    load_state(Reader(), Streams(), None, groups)
    assert _mask(core.tp_rngs[0]) == drawn[0]


def _resume_body(rank, world, prefix, cache, tmp):
    import torch.distributed as dist

    from megatron_th.config import parse_config
    from megatron_th.training.checkpoint import CheckpointReader
    from megatron_th.training.pretrain import pretrain

    def train(*extra):
        cfg, _ = parse_config(argv(prefix, cache, *INTERLEAVED, *extra))
        return pretrain(cfg, log=lambda *a: None)["losses"]

    first, second = os.path.join(tmp, "ck_first"), os.path.join(tmp, "ck_second")
    straight = train("--train-iters", "3", "--save", first, "--save-interval", "1")  # saving draws no random numbers
    if rank == 0:  # resume from the iteration-1 checkpoint of that same run
        shutil.copytree(os.path.join(first, "iter_0000001"), os.path.join(second, "iter_0000001"))
        with open(os.path.join(second, "latest"), "w") as f:
            f.write("iter_0000001")
    dist.barrier()
    resumed = train("--train-iters", "3", "--load", second)
    keys = sorted(n for n in CheckpointReader(os.path.join(first, "iter_0000001")).tensors if n.startswith("rng."))
    return straight, resumed, keys


def test_interleaved_tp_dropout_resumes_bitwise(tmp_path):
    prefix = _data(tmp_path)
    out = D.run(_resume_body, 4, prefix, str(tmp_path / "cache"), str(tmp_path), timeout=240)
    straight, resumed, keys = out[3]  # a last-stage rank holds the loss
    assert len(straight) == 3 and resumed == straight[1:]  # bitwise: the same floats
    assert keys == sorted(f"rng.{r}.{k}" for r in range(4) for k in ("cpu", "tp.0", "tp.1"))
