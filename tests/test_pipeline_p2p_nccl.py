"""Pipeline point-to-point under NCCL's rules, proven on CPU (issue 13, faults 1 and 11).

gloo matches tags and buffers small sends, so a schedule that hangs on NCCL can pass every gloo
test. Here the real executor runs on gloo under a recorder (p2p_recorder.py) that logs every
p2p call in issue order, batched or not, with its communicator and data fingerprints; the
per-rank logs are replayed through a model of NCCL semantics (nccl_model.py), in both stream
modes. One launch of 8 ranks covers p = 2, 4 and 8 (DP 4, 2, 1), every m from 1 to 2p+1, v in
{1, 2} where interleaving is valid, training and evaluation.
"""
import json
import os

import pytest

from tests import dist as D
from tests.nccl_model import plan_events, plan_makespan, replay
from megatron_th.parallel.schedule_order import order, simulate, warmup
from megatron_th.parallel import p2p_plan

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "p2p_order_b6a12b9.json")
MODES = ("lazy", "eager")


def cases(p):
    out = []
    for m in range(1, 2 * p + 2):
        for v in (1, 2):
            if v > 1 and (m % p or m < p):
                continue
            out += [(m, v, False), (m, v, True)]
    return out


def _clean(report):
    return {k: v for k, v in report.items() if v and k != "deadlock"}


# -- the model itself: it must be able to say no --------------------------------------------------
def _call(cid, group, ops, batched=True):
    return {"type": "call", "id": cid, "group": group, "batched": batched, "ops": ops}


def _op(op, peer, label):
    return {"op": op, "peer": peer, "nbytes": 4, "label": label}


def test_model_finds_the_1f1b_cycle_of_unbatched_sends():
    # stage 0: send a1, recv g0; stage 1: send g0, recv a1 (each waited only at the end)
    ev = {0: [_call("s", "pp", [_op("send", 1, "a1")], False), _call("r", "pp", [_op("recv", 1, "g0")], False)],
          1: [_call("s", "pp", [_op("send", 0, "g0")], False), _call("r", "pp", [_op("recv", 0, "a1")], False)]}
    for mode in MODES:
        assert replay(ev, mode)["deadlock"]
    batched = {0: [_call("x", "pp", [_op("send", 1, "a1"), _op("recv", 1, "g0")])],
               1: [_call("x", "pp", [_op("send", 0, "g0"), _op("recv", 0, "a1")])]}
    assert not replay(batched)["deadlock"]


def test_model_finds_a_wrong_buffer_with_pp2_on_one_communicator():
    # PP=2 interleaved: rank 0 sends a gradient then an activation to rank 1 on one communicator,
    # rank 1 posts the activation receive first: FIFO without tags swaps the two
    ev = {0: [_call("x", "pp", [_op("send", 1, "grad"), _op("send", 1, "act")])],
          1: [_call("x", "pp", [_op("recv", 0, "act"), _op("recv", 0, "grad")])]}
    rep = replay(ev)
    assert not rep["deadlock"] and len(rep["wrong_buffer"]) == 2
    two = {0: [_call("a", "act", [_op("send", 1, "act")]), _call("g", "grad", [_op("send", 1, "grad")])],
           1: [_call("a", "act", [_op("recv", 0, "act")]), _call("g", "grad", [_op("recv", 0, "grad")])]}
    assert not _clean(replay(two))


def test_model_waits_order_later_calls_and_flags_a_first_batch_without_every_rank():
    # rank 1 waits for a receive that rank 0 only sends after rank 1's later send: a cycle through
    # the compute stream, not through a communicator's stream
    ev = {0: [_call("r", "g1", [_op("recv", 1, "y")]), {"type": "wait", "id": "r"}, _call("s", "g2", [_op("send", 1, "x")])],
          1: [_call("r", "g2", [_op("recv", 0, "x")]), {"type": "wait", "id": "r"}, _call("s", "g1", [_op("send", 0, "y")])]}
    assert replay(ev)["deadlock"]
    first = {0: [_call("b", "g", [_op("send", 1, "x")])], 1: [_call("b", "g", [_op("recv", 0, "x")])],
             2: [{"type": "coll", "id": "c", "group": "g", "ranks": [0, 1, 2]}]}
    assert replay(first)["first_batch"] == ["g"]


def test_model_calls_the_recorded_order_of_b6a12b9_a_deadlock():
    """The executor as it was (tagged isend early, irecv().wait() late), recorded on gloo."""
    with open(FIXTURE) as f:
        fixture = json.load(f)
    assert set(fixture) == {"p2_m3_v1_train", "p4_m4_v2_train"}
    for name, per_rank in fixture.items():
        events = {int(r): evs for r, evs in per_rank.items()}
        for mode in MODES:
            assert replay(events, mode)["deadlock"], (name, mode)


# -- the plan: a pure function, checked for the whole sweep and beyond -----------------------------
@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_exchange_plan_never_deadlocks_and_fills_every_buffer(p):
    for m, v, fo in cases(p):
        for mode in MODES:
            rep = replay(plan_events(p, m, v, fo, p2p_plan.exchanges), mode)
            assert not rep["deadlock"] and not _clean(rep), (p, m, v, fo, mode, rep)


def test_the_per_op_exchange_deadlocks_interleaved():
    """Why interleaved steady-state F and B share one exchange: sending F's output before the
    paired B (one exchange per op, as 1F1B does) deadlocks interleaved 1F1B, e.g. p=2, m=4, v=2."""
    def per_op(p, r, m, v, fo):
        out, pending = [], []
        for step in p2p_plan.steps(p, r, m, v, fo):
            for kind, k in step:
                mb, vs = p2p_plan.op_stage(p, r, v, kind, k)
                need = p2p_plan.needs(p, v, kind, mb, vs)
                out.append({"send": pending, "recv": [need] if need else []})
                sent = p2p_plan.sends(p, v, kind, mb, vs)
                pending = [sent] if sent else []
        return out + [{"send": pending, "recv": []}]
    assert replay(plan_events(2, 4, 2, False, per_op), "eager")["deadlock"]


def test_exchanges_keep_the_schedules_ideal_time():
    """Waiting for an exchange must not cost overlap: with free messages, the step takes exactly
    what the compute-only replay of the schedule (schedule_order.simulate) takes."""
    for p in (2, 3, 4, 8):
        for m, v, fo in cases(p):
            if not fo:
                assert plan_makespan(p, m, v, p2p_plan.exchanges, p2p_plan.steps) == simulate(p, m, v)["makespan"]


def test_pairing_1f1b_forward_and_backward_serialises_the_stages():
    """Why 1F1B keeps one op per step: pairing F with the following B (as interleaving must)
    makes the exchange after the pair wait for the neighbour's whole pair; p=2, m=8: 48 units
    instead of 27."""
    def paired_steps(p, r, m, v, fo):
        ops, w = order(p, r, m, v, fo), warmup(p, r, m, v)
        s = m * v - w
        return [[o] for o in ops[:w]] + [ops[w + 2 * i: w + 2 * i + 2] for i in range(s)] + \
            [[o] for o in ops[w + 2 * s:]]

    def paired_plan(p, r, m, v, fo):
        saved, p2p_plan.steps = p2p_plan.steps, paired_steps
        try:
            return p2p_plan.exchanges(p, r, m, v, fo)
        finally:
            p2p_plan.steps = saved
    assert plan_makespan(2, 8, 1, paired_plan, paired_steps) == 48.0
    assert simulate(2, 8, 1)["makespan"] == plan_makespan(2, 8, 1, p2p_plan.exchanges, p2p_plan.steps) == 27.0


# -- the real executor, recorded ------------------------------------------------------------------
def _sweep_body(rank, world):
    from tests.p2p_recorder import record_runs

    return record_runs(cases, [2, 4, 8])


@pytest.fixture(scope="module")
def recorded():
    per_rank = D.run(_sweep_body, 8, timeout=300)
    runs = {}
    for res in per_rank:
        for key, rec in res.items():
            line = tuple(rec["line"])
            runs.setdefault((key, line), {})[rec["rank"]] = rec
    return runs


def test_recorded_executor_is_deadlock_free_under_nccl_rules(recorded):
    seen = set()
    for ((p, m, v, fo), line), per_rank in recorded.items():
        assert sorted(per_rank) == sorted(line)
        events = {r: rec["events"] for r, rec in per_rank.items()}
        assert any(e["type"] == "call" for evs in events.values() for e in evs) or m * p == 0
        for mode in MODES:
            rep = replay(events, mode)
            assert not rep["deadlock"], (p, m, v, fo, mode, rep["stuck"])
            assert not _clean(rep), (p, m, v, fo, mode, _clean(rep))  # contents, sizes, first batch
        for evs in events.values():  # every p2p call is batched, on a PP communicator
            assert all(e["batched"] for e in evs if e["type"] == "call")
        for rec in per_rank.values():  # a micro-batch's inputs and document plan: once per rank,
            assert rec["inputs_built"] == rec["inputs_distinct"] == m  # whatever v is
        seen.add((p, m, v, fo))
    assert seen == {(p, *c) for p in (2, 4, 8) for c in cases(p)}


def test_sent_tensors_are_released_once_their_send_completed(recorded):
    """Fault 11: no reference to a sent tensor's storage (the activation included) survives the
    wait of its send, nor the start of the next forward: sent activations no longer pile up
    until the end of the step (b6a12b9's executor fails this at its first forward after a send)."""
    leaks = {(key, r): rec["leaked"] for (key, _), per_rank in recorded.items()
             for r, rec in per_rank.items() if rec["leaked"]}
    assert not leaks
    sends = sum(op["op"] == "send" for (_, _), per_rank in recorded.items() for rec in per_rank.values()
                for e in rec["events"] if e["type"] == "call" for op in e["ops"])
    assert sends > 1000  # the check above looked at real sends
