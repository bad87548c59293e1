"""Pipeline parallelism: schedule orders and bubbles, and whole runs equal to one process."""
import json
import os

import numpy as np
import pytest

from megatron_th.config import ConfigError
from megatron_th.parallel.schedule_order import ScheduleError, bubble_formula, order, simulate
from megatron_th.parallel.stages import layer_ranges
from megatron_th.parallel.volume import pp_send_bytes
from tests import dist as D
from tests.test_tensor_parallel import _data, _train, argv


@pytest.mark.parametrize("p,m,v", [(2, 1, 1), (2, 4, 1), (4, 4, 1), (4, 8, 1), (3, 7, 1),
                                   (2, 4, 2), (4, 4, 2), (4, 8, 2), (3, 6, 3), (2, 8, 4)])
def test_unit_cost_bubble_matches_formula(p, m, v):
    for f, b in ((1.0, 1.0), (1.0, 2.0)):
        sim = simulate(p, m, v, f, b)
        assert sim["bubble"] == pytest.approx(bubble_formula(p, m, v), abs=1e-12)
    if v == 1:  # 1F1B keeps at most p - rank forward activations in flight
        assert sim["peak_inflight"] == [min(p - r, m) for r in range(p)]
    else:
        assert all(x <= min((p - r - 1) * 2 + (v - 1) * p + 1, m * v) for r, x in enumerate(sim["peak_inflight"]))


def test_orders_are_complete_and_causal_per_rank():
    for p, m, v in ((4, 8, 2), (2, 6, 1)):
        for r in range(p):
            ops = order(p, r, m, v)
            assert sorted(k for op, k in ops if op == "F") == list(range(m * v))
            assert sorted(k for op, k in ops if op == "B") == list(range(m * v))
            seen = set()
            for op, k in ops:
                if op == "B":
                    assert any(o == "F" for o, _ in ops[: ops.index((op, k))])
                seen.add((op, k))


def test_impossible_schedules_and_partitions_are_clear_errors():
    with pytest.raises(ScheduleError, match="multiple of --pipeline-model-parallel-size"):
        order(4, 0, 6, 2)
    with pytest.raises(ConfigError, match="--num-layers 6 is not divisible by the 4 pipeline stages"):
        layer_ranges(6, 4)
    assert layer_ranges(6, 4, first=0, last=0) == [(0, 0), (0, 3), (3, 6), (6, 6)]
    assert layer_ranges(8, 2, 2) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert layer_ranges(7, 3, first=1) == [(0, 1), (1, 4), (4, 7)]
    with pytest.raises(ConfigError, match="cannot be split"):
        layer_ranges(7, 3, first=2)


ITERS = 10
PP_ARGS = ["--num-layers", "4", "--global-batch-size", "8", "--micro-batch-size", "2"]
UNTIED = ["--untie-embeddings-and-output-weights"]
LAYOUTS = {  # name -> (world, flags)
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "pp2_v2": (2, ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]),
    "pp4": (4, ["--pipeline-model-parallel-size", "4"]),
    "pp2_tp2_sp": (4, ["--pipeline-model-parallel-size", "2", "--tensor-model-parallel-size", "2",
                       "--sequence-parallel"]),
}


def _pp_body(rank, world, prefix, cache, layouts):
    from megatron_th.parallel.comm import COUNTER

    out = {}
    for name, (w, flags) in layouts.items():
        if w != world:
            continue
        for tied in (True, False):
            out[(name, tied)] = _train(argv(prefix, cache, *PP_ARGS, *flags, *([] if tied else UNTIED)), ITERS)
        COUNTER.reset()
        trace = os.path.join(os.path.dirname(cache), f"trace_{name}")
        _train(argv(prefix, cache, *PP_ARGS, *flags, "--pipeline-trace-dir", trace), 1)
        out[(name, "bytes")] = dict(COUNTER.bytes)
        with open(os.path.join(trace, f"rank{rank}.json")) as f:
            out[(name, "trace")] = (json.load(f)["ops"], COUNTER.seconds[("send", "pp")])
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pp")
    prefix, cache = _data(tmp), str(tmp / "cache")
    serial = {tied: _train(argv(prefix, cache, *PP_ARGS, *([] if tied else UNTIED)), 10) for tied in (True, False)}
    par = {}
    for world in (2, 4):
        per_rank = D.run(_pp_body, world, prefix, cache, LAYOUTS, timeout=400)
        for r, res in enumerate(per_rank):
            for key, val in res.items():
                par.setdefault(key, {})[r] = val
    return serial, par


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_pipeline_parity_10_steps(runs, layout, tied):
    serial, par = runs
    loss0, gn0 = serial[tied]
    for rank, (loss, gn) in par[(layout, tied)].items():  # every rank agrees on loss and norm
        np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=0)
        np.testing.assert_allclose(gn, gn0, rtol=1e-4, atol=0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_trace_splits_each_op_into_compute_and_communication(runs, layout):
    """--pipeline-trace-dir: each op's blocking-collective seconds (TP) and, on the first op of each
    step, the exchange before it: what benchmarks/vs_megatron_core.py breaks a step into."""
    from megatron_th.parallel.p2p_plan import steps

    world, flags = LAYOUTS[layout]
    p = int(flags[flags.index("--pipeline-model-parallel-size") + 1])
    tp = int(flags[flags.index("--tensor-model-parallel-size") + 1]) if "--tensor-model-parallel-size" in flags else 1
    v = 2 if "--num-layers-per-virtual-pipeline-stage" in flags else 1
    for rank, (ops, p2p_seconds) in runs[1][(layout, "trace")].items():
        assert p2p_seconds > 0
        assert all(0 <= o["comm"] <= o["end"] - o["start"] for o in ops)
        assert all(0 <= o["comm_cpu"] <= o["cpu"] for o in ops)  # CPU seconds: the collectives' within the op's
        assert (sum(o["comm"] for o in ops) > 0) == (tp > 1)  # TP collectives inside the ops, none without TP
        firsts = [o for o in ops if o["exchange"] is not None]
        assert len(firsts) == len(steps(p, rank // tp, 4, v))
        assert all(x["exchange"][0] <= x["exchange"][1] <= x["start"] and x["exchange_cpu"] >= 0 for x in firsts)
        assert ops[-1]["end"] <= ops[-1]["exchange_after"][0] <= ops[-1]["exchange_after"][1]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_p2p_bytes_equal_the_analytic_volume(runs, layout):
    world, flags = LAYOUTS[layout]
    p = int(flags[flags.index("--pipeline-model-parallel-size") + 1])
    tp = int(flags[flags.index("--tensor-model-parallel-size") + 1]) if "--tensor-model-parallel-size" in flags else 1
    v = 2 if "--num-layers-per-virtual-pipeline-stage" in flags else 1
    sp = "--sequence-parallel" in flags
    mbs, s, h, m = 2, 32, 32, 4
    per_rank = runs[1][(layout, "bytes")]
    total_send = sum(b.get(("send", "pp"), 0) for b in per_rank.values())
    assert total_send == pp_send_bytes(p * v, mbs, s // tp if sp else s, h, m, tp)
    vp = 8064  # the shipped 8000-token vocabulary padded to a multiple of 128
    for rank, b in per_rank.items():
        first_or_last = rank // tp in (0, p - 1)  # grid[pp, dp=0, tp]
        assert b.get(("all_reduce", "embd"), 0) == (vp // tp * h * 4 if first_or_last else 0)
        assert b[("all_reduce", "pp")] == 8  # the step's loss, shared by the stages
