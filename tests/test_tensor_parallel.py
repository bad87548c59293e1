"""Tensor (+ sequence) parallelism equals the single-process model: layers, whole runs, bytes."""
import numpy as np
import pytest
import torch

from megatron_th.parallel.volume import tp_step_bytes
from tests import dist as D

VOCAB_PAD = 128


def _data(tmp):
    from megatron_th.data.indexed import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    prefix = str(tmp / "syn")
    with IndexedDatasetBuilder(prefix) as b:
        for _ in range(300):
            b.add_document(np.append(rng.integers(5, 300, size=rng.integers(5, 50)), 2))
    return prefix


def argv(prefix, cache, *extra):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "8", "--seq-length", "32",
            "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
            "--ffn-hidden-size", "64", "--micro-batch-size", "2", "--global-batch-size", "4", "--data-path", prefix,
            "--data-cache-path", cache, "--lr", "3e-3", "--lr-warmup-iters", "2", "--lr-decay-iters", "20",
            "--log-interval", "100", "--seed", "3", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--num-threads", "1", "--make-vocab-size-divisible-by", str(VOCAB_PAD), *extra]


VARIANTS = {  # name -> extra flags; each runs with and without sequence parallelism
    "gqa_tied": ["--num-query-groups", "4"],
    "mha_untied_bias": ["--num-query-groups", "8", "--untie-embeddings-and-output-weights", "--no-disable-bias-linear",
                        "--normalization", "LayerNorm", "--position-embedding-type", "learned_absolute",
                        "--reset-attention-mask", "--reset-position-ids"],
}


def _train(args, iters):
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args + ["--train-iters", str(iters)])
    out = pretrain(cfg, log=lambda *a: None)
    return out["losses"], out["grad_norms"]


def _runs_body(rank, world, prefix, cache, variants):
    from megatron_th.parallel.comm import COUNTER

    res = {}
    for name, extra in variants.items():
        for sp in (False, True):
            res[(name, sp)] = _train(argv(prefix, cache, "--tensor-model-parallel-size", str(world), *extra,
                                          *(["--sequence-parallel"] if sp else [])), 10)
    # communication volume of exactly one step, fp32
    for sp in (False, True):
        COUNTER.reset()
        _train(argv(prefix, cache, "--tensor-model-parallel-size", str(world), "--num-query-groups", "4",
                    *(["--sequence-parallel"] if sp else [])), 1)
        res[("bytes", sp)] = dict(COUNTER.bytes)
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    prefix, cache = _data(tmp), str(tmp / "cache")
    serial = {name: _train(argv(prefix, cache, *extra), 10) for name, extra in VARIANTS.items()}
    tp = {w: D.run(_runs_body, w, prefix, cache, VARIANTS, timeout=300)[0] for w in (2, 4)}
    return serial, tp


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_parity_10_steps(runs, tp, sp, variant):
    serial, par = runs
    loss0, gn0 = serial[variant]
    loss, gn = par[tp][(variant, sp)]
    assert len(loss) == 10
    np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=0)
    np.testing.assert_allclose(gn, gn0, rtol=1e-4, atol=0)
    assert loss[-1] < loss[0]  # it trained


def analytic_bytes(tp, sp, L=2, b=2, s=32, h=32, micro=2, norms_per_layer=2):
    """One step of the 2-layer RMSNorm model: TP traffic from the formula, plus the global grad
    norm (one float64 over the model-parallel group)."""
    out = tp_step_bytes(L, b, s, h, micro, sp, sp_grad_elems=(norms_per_layer * L + 1) * h)
    out[("all_reduce", "mp")] = 8
    return out


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("sp", [False, True])
def test_communication_volume_is_exact(runs, tp, sp):
    measured = runs[1][tp][("bytes", sp)]
    assert measured == analytic_bytes(tp, sp)


def _layers_body(rank, world):
    import torch.nn.functional as F
    from torch import nn

    from megatron_th.parallel import comm
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                             shard, vocab_parallel_cross_entropy)

    checked = []
    for tp in (1, 2, 4):
        if world % tp:
            continue
        g = ParallelGroups.build(tp=tp, pp=1)
        r, grp = g.tp_rank, g.tp_group
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 16, generator=gen)
        w1, b1 = torch.randn(24, 16, generator=gen) / 4, torch.randn(24, generator=gen)
        w2, b2 = torch.randn(16, 24, generator=gen) / 5, torch.randn(16, generator=gen)
        for sp in (False, True):
            ref1, ref2 = nn.Linear(16, 24), nn.Linear(24, 16)
            with torch.no_grad():
                ref1.weight.copy_(w1), ref1.bias.copy_(b1), ref2.weight.copy_(w2), ref2.bias.copy_(b2)
            xr = x.clone().requires_grad_(True)
            yr = ref2(F.gelu(ref1(xr)))
            yr.square().sum().backward()
            col = ColumnParallelLinear(shard(w1, 0, r, tp), shard(b1, 0, r, tp), grp, sp)
            row = RowParallelLinear(shard(w2, 1, r, tp), b2.clone(), grp, sp)
            xp = (comm.split(x, grp, 1) if sp else x.clone()).requires_grad_(True)
            yp = row(F.gelu(col(xp)))
            yp.square().sum().backward()
            y_full = comm.all_gather(yp.detach(), grp, 1) if sp else yp.detach()
            torch.testing.assert_close(y_full, yr.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(col.weight.grad, shard(ref1.weight.grad, 0, r, tp), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(row.weight.grad, shard(ref2.weight.grad, 1, r, tp), rtol=1e-5, atol=1e-5)
            gx = comm.all_gather(xp.grad, grp, 1) if sp else xp.grad
            torch.testing.assert_close(gx, xr.grad, rtol=1e-5, atol=1e-5)
            bias_grad = row.bias.grad.clone()
            if sp:
                comm.all_reduce(bias_grad, grp)  # partial per sequence shard: summed by finalize_grads
            torch.testing.assert_close(bias_grad, ref2.bias.grad, rtol=1e-5, atol=1e-5)
        # embedding and cross entropy over a padded vocabulary (true vocab 29 of 32)
        tokens = torch.randint(0, 29, (2, 8), generator=gen)
        ew = torch.randn(32, 16, generator=gen)
        ref_e = nn.Embedding(32, 16)
        with torch.no_grad():
            ref_e.weight.copy_(ew)
        emb = VocabParallelEmbedding(shard(ew, 0, r, tp), grp, r * 32 // tp)
        out = emb(tokens)
        torch.testing.assert_close(out, ref_e(tokens))
        logits = torch.randn(2, 8, 32, generator=gen)
        labels = torch.randint(0, 29, (2, 8), generator=gen)
        lr_ = logits[..., :29].clone().requires_grad_(True)
        ref_loss = F.cross_entropy(lr_.flatten(0, 1), labels.flatten(), reduction="none").view(2, 8)
        ref_loss.sum().backward()
        lp = shard(logits, 2, r, tp).requires_grad_(True)
        loss = vocab_parallel_cross_entropy(lp, labels, grp, r * 32 // tp, 29)
        loss.sum().backward()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        full_grad = torch.cat([lr_.grad, torch.zeros(2, 8, 3)], dim=-1)
        torch.testing.assert_close(lp.grad, shard(full_grad, 2, r, tp), rtol=1e-5, atol=1e-6)
        checked.append(tp)
    return checked


def test_layer_parity_tp_1_2_4():
    assert D.run(_layers_body, 4, timeout=120) == [[1, 2, 4]] * 4


def test_gqa_groups_must_divide_tp():
    from megatron_th.config import ConfigError, finalize, parse_config

    cfg, _ = parse_config(["--num-attention-heads", "8", "--num-query-groups", "2", "--hidden-size", "64",
                           "--tensor-model-parallel-size", "4"])
    with pytest.raises(ConfigError, match="--num-query-groups 2 is not divisible by --tensor-model-parallel-size 4"):
        finalize(cfg, world_size=4)


def _rng_body(rank, world):
    import torch.distributed as dist

    from megatron_th.config import parse_config, finalize
    from megatron_th.parallel import comm
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.stages import build_chunks

    g = ParallelGroups.build(tp=2, pp=1)  # world 4: TP 2 x DP 2
    out = {}
    for sp in (False, True):
        cfg, _ = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                               "--seq-length", "16", "--hidden-dropout", "0.3", "--attention-dropout", "0.3",
                               "--tensor-model-parallel-size", "2", "--global-batch-size", "4",
                               "--micro-batch-size", "2", *(["--sequence-parallel"] if sp else [])])
        finalize(cfg, world)
        torch.manual_seed(11)  # the same default stream on every rank, as pretrain seeds it
        model = build_chunks(cfg, 300, g, "cpu", torch.float32).chunks[0].train()
        with model.tp_rng.fork():
            forked = torch.rand(6)
        plain = torch.rand(6)
        tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        loss = model(tokens=tokens, labels=tokens).detach()
        gathered = {}
        for name, t in (("forked", forked), ("plain", plain), ("loss", loss.reshape(-1))):
            buf = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(buf, t)
            gathered[name] = [b.tolist() for b in buf]
        out[sp] = gathered
    return out, [int(x) for x in g.grid.ravel()]


def test_dropout_streams_differ_over_tp_and_match_over_dp():
    out, grid = D.run(_rng_body, 4, timeout=120)[0]
    # grid[pp=0, dp, tp]: ranks 0,1 are TP ranks of DP replica 0; ranks 2,3 of replica 1
    for sp, g in out.items():
        f = g["forked"]
        assert f[0] != f[1] and f[2] != f[3]          # sharded activations: a mask per TP rank
        assert f[0] == f[2] and f[1] == f[3]          # ... and the same on every DP replica
        assert g["plain"][0] == g["plain"][1] == g["plain"][2]  # replicated activations: one mask
        # with dropout on, the TP ranks of a replica still compute the very same loss
        assert g["loss"][0] == pytest.approx(g["loss"][1], rel=1e-6)
