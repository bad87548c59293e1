"""Data parallelism and Zero-1: whole runs equal to one process, memory and bytes per rank."""
import numpy as np
import pytest

from megatron_th.training.memory import analytic_bytes_per_param
from tests import dist as D
from tests.test_tensor_parallel import _data, argv

BASE = ["--num-layers", "4", "--global-batch-size", "8", "--micro-batch-size", "2"]
ZERO = ["--use-distributed-optimizer"]
LAYOUTS = {  # name -> (world, flags)
    "dp2": (2, []),
    "dp2_zero_overlap_buckets": (2, ZERO + ["--overlap-grad-reduce", "--ddp-bucket-size", "3000"]),
    "dp4": (4, ["--ddp-bucket-size", "5000", "--overlap-grad-reduce"]),
    "dp4_zero": (4, ZERO),
    "tp2_pp2_dp2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                        "--sequence-parallel"]),
    "tp2_pp2_dp2_zero": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                             "--sequence-parallel"] + ZERO),
}


def _run(args, iters):
    from megatron_th.config import parse_config
    from megatron_th.training.memory import storage_bytes
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args + ["--train-iters", str(iters)])
    out = pretrain(cfg, log=lambda *a: None)
    mem = storage_bytes(out["named_params"], out["optimizer"], out["buffers"])
    nparams = sum(p.numel() for _, p in out["named_params"])
    padding = out["buffers"].numel - nparams
    return {"loss": out["losses"], "gnorm": out["grad_norms"], "mem": mem, "nparams": nparams,
            "padding": padding, "buffer_numel": out["buffers"].numel}


def _body(rank, world, prefix, cache):
    from megatron_th.parallel.comm import COUNTER

    out = {}
    for name, (w, flags) in LAYOUTS.items():
        if w == world:
            out[name] = _run(argv(prefix, cache, *BASE, *flags), 10)
    if world == 2:
        for zero in (False, True):
            out[("bf16", zero)] = _run(argv(prefix, cache, *BASE, "--bf16", *(ZERO if zero else [])), 10)
            out[("fp32_mem", zero)] = _run(argv(prefix, cache, *BASE, *(ZERO if zero else [])), 1)
            COUNTER.reset()
            r = _run(argv(prefix, cache, *BASE, *(ZERO if zero else [])), 1)
            out[("bytes", zero)] = (dict(COUNTER.bytes), r["buffer_numel"])
    if world == 4:
        out[("bf16_mem", True)] = _run(argv(prefix, cache, *BASE, "--bf16", *ZERO), 1)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    prefix, cache = _data(tmp), str(tmp / "cache")
    serial = _run(argv(prefix, cache, *BASE), 10)
    serial_bf16 = _run(argv(prefix, cache, *BASE, "--bf16"), 10)
    par = {w: D.run(_body, w, prefix, cache, timeout=600) for w in (2, 4, 8)}
    return serial, serial_bf16, par


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parity_10_steps(runs, layout):
    serial, _, par = runs
    world = LAYOUTS[layout][0]
    for rank_res in par[world]:
        r = rank_res[layout]
        np.testing.assert_allclose(r["loss"], serial["loss"], rtol=1e-5, atol=0)
        np.testing.assert_allclose(r["gnorm"], serial["gnorm"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("zero", [False, True])
def test_bf16_agrees_across_layouts(runs, zero):
    _, serial_bf16, par = runs
    for rank_res in par[2]:
        np.testing.assert_allclose(rank_res[("bf16", zero)]["loss"], serial_bf16["loss"], rtol=1e-2)


@pytest.mark.parametrize("key,world,precision,zero", [(("fp32_mem", False), 2, "fp32", False),
                                                       (("fp32_mem", True), 2, "fp32", True),
                                                       (("bf16", False), 2, "bf16", False),
                                                       (("bf16", True), 2, "bf16", True),
                                                       (("bf16_mem", True), 4, "bf16", True)])
def test_memory_per_rank_matches_the_table(runs, key, world, precision, zero):
    for r in (res[key] for res in runs[2][world]):
        n, pad = r["nparams"], r["padding"]
        expected = analytic_bytes_per_param(precision, world, zero) * n
        # padding: the buffers (grads, and params under Zero-1) are padded to a multiple of DP
        slack = pad * (4 + (2 if precision == "bf16" else 4) * zero) + world * 16
        assert abs(r["mem"]["total"] - expected) <= slack, (r["mem"], expected, pad)
        assert pad < world * 4  # a few elements per bucket


@pytest.mark.parametrize("zero", [False, True])
def test_dp_communication_volume(runs, zero):
    for bytes_, numel in (res[("bytes", zero)] for res in runs[2][2]):
        scalars = 8 + 8  # the global loss-token count and the loss sum (float64 each)
        if zero:
            assert bytes_[("reduce_scatter", "dp")] == numel * 4
            assert bytes_[("all_gather", "dp")] == numel * 4
            assert bytes_[("all_reduce", "dp")] == scalars
            assert bytes_[("all_reduce", "world")] == 8  # the grad norm over all shards
        else:
            assert bytes_[("all_reduce", "dp")] == numel * 4 + scalars
            assert ("reduce_scatter", "dp") not in bytes_
