"""Data parallelism and Zero-1: whole runs equal to one process, memory and bytes per rank;
--overlap-param-gather: bitwise the runs without it, gathers really left in flight and waited in
the next forward's pre-hooks, no parameter read while its gather is pending, the same collective
order on every DP rank."""
import contextlib
import os

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
    # Zero-1 3D with both overlaps, interleaved, one parameter per bucket (the last stage's tied
    # head weight alone in its bucket): the --overlap-param-gather checks record this run
    "tp2_pp2_dp2_zero_overlap": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                     "--sequence-parallel", "--num-layers-per-virtual-pipeline-stage", "1",
                                     "--overlap-grad-reduce", "--overlap-param-gather", "--ddp-bucket-size", "1"]
                                 + ZERO),
}


def _run(args, iters, keep=False):
    from megatron_th.config import parse_config
    from megatron_th.training.memory import storage_bytes
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args + ["--train-iters", str(iters)])
    out = pretrain(cfg, log=lambda *a: None)
    mem = storage_bytes(out["named_params"], out["optimizer"], out["buffers"])
    nparams = sum(p.numel() for _, p in out["named_params"])
    padding = out["buffers"].numel - nparams
    res = {"loss": out["losses"], "gnorm": out["grad_norms"], "mem": mem, "nparams": nparams,
           "padding": padding, "buffer_numel": out["buffers"].numel}
    if keep:  # kept in the rank process (compared there), never sent back
        res["params"] = {n: p.detach().clone() for n, p in out["named_params"]}
        res["out"] = out
    return res


# -- --overlap-param-gather -------------------------------------------------------------------
OPG = ["--overlap-grad-reduce", "--ddp-bucket-size", "3000"] + ZERO  # dp2_zero_overlap_buckets' flags


@contextlib.contextmanager
def _record_param_gathers():
    """Inside: a log of this rank's Zero-1 parameter gathers and DP collectives, in issue order.

    ``events``: ("step",) / ("step_return", stepped) around MixedPrecisionOptimizer.step,
    ("launch", bucket) / ("wait", bucket, in_pre_hook) for every all-gather into the parameter
    buffer, ("forward", root) when a model chunk's forward starts, ("grad",) when backward
    accumulates a gradient. ``dp_ops``: (op, elements) of every collective over the DP group.
    ``stale``: (torch function, bucket) for every use of a parameter whose gather is launched or
    due but not complete, seen by a TorchFunctionMode (any read: forward, evaluation, EMA swap,
    checkpoint save), independently of which modules the pre-hooks sit on."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    from megatron_th.parallel import comm
    from megatron_th.parallel.data_parallel import GradBuffers
    from megatron_th.training.optimizer import MixedPrecisionOptimizer

    log = {"events": [], "dp_ops": [], "stale": []}
    ev, ctx = log["events"], {"buffers": None, "hook": False}
    saved = {"enable": GradBuffers.enable_param_gather_overlap, "pre": GradBuffers._pre_hook,
             "grad": GradBuffers._hook, "step": MixedPrecisionOptimizer.step,
             "ag": comm.all_gather_into, "rs": comm.reduce_scatter_into, "ar": comm.all_reduce}

    class Work:
        def __init__(self, work, bucket):
            self.work, self.bucket = work, bucket

        def wait(self):
            self.work.wait()
            ev.append(("wait", self.bucket, ctx["hook"]))

    def dp_op(name, group, numel):
        if ctx["buffers"] is not None and group is ctx["buffers"].group:
            log["dp_ops"].append((name, numel))

    def all_gather_into(out, t, group, async_op=False):
        dp_op("all_gather", group, out.numel())
        work = saved["ag"](out, t, group, async_op)
        buf = ctx["buffers"]
        if buf is not None and out.untyped_storage().data_ptr() == buf.param_data.untyped_storage().data_ptr():
            bucket = next(b.index for b in buf.buckets if b.start == out.storage_offset())
            ev.append(("launch", bucket))
            return Work(work, bucket)
        return work

    def reduce_scatter_into(out, t, group, async_op=False):
        dp_op("reduce_scatter", group, t.numel())
        return saved["rs"](out, t, group, async_op)

    def all_reduce(t, group=None, *a, **k):
        dp_op("all_reduce", group, t.numel())
        return saved["ar"](t, group, *a, **k)

    def enable(self, modules):
        ctx["buffers"] = self
        ctx["roots"] = {id(m): i for i, m in enumerate(modules)}
        return saved["enable"](self, modules)

    def pre_hook(self, buckets, root, module, args, kwargs):
        if root is not None:
            ev.append(("forward", ctx["roots"][id(root)]))
        ctx["hook"] = True
        try:
            return saved["pre"](self, buckets, root, module, args, kwargs)
        finally:
            ctx["hook"] = False

    def grad_hook(self, p):
        if ev and ev[-1] != ("grad",):
            ev.append(("grad",))
        return saved["grad"](self, p)

    def step(self, lr):
        ev.append(("step",))
        out = saved["step"](self, lr)
        ev.append(("step_return", out[0]))
        return out

    class StaleUse(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") not in ("__get__", "__set__", "__delete__"):  # .grad = None is no read
                for a in tree_leaves((args, kwargs)):
                    b = getattr(a, "_bucket", None) if isinstance(a, torch.nn.Parameter) else None
                    if b is not None and (b.param_stale or b.param_work is not None):
                        log["stale"].append((getattr(func, "__name__", str(func)), b.index))
            return func(*args, **kwargs)

    GradBuffers.enable_param_gather_overlap, GradBuffers._pre_hook, GradBuffers._hook = enable, pre_hook, grad_hook
    MixedPrecisionOptimizer.step = step
    comm.all_gather_into, comm.reduce_scatter_into, comm.all_reduce = all_gather_into, reduce_scatter_into, all_reduce
    try:
        with StaleUse():
            yield log
    finally:
        GradBuffers.enable_param_gather_overlap, GradBuffers._pre_hook = saved["enable"], saved["pre"]
        GradBuffers._hook, MixedPrecisionOptimizer.step = saved["grad"], saved["step"]
        comm.all_gather_into, comm.reduce_scatter_into, comm.all_reduce = saved["ag"], saved["rs"], saved["ar"]
        log["num_buckets"] = len(ctx["buffers"].buckets) if ctx["buffers"] is not None else 0


def _check_gather_events(log, finished_outside=()):
    """On one rank: after every applied step exactly one gather (the first bucket in forward
    order) is launched and still pending when the step returns; every bucket is then gathered
    once, launched in forward order, and waited inside a forward pre-hook before the next
    backward begins (only the first micro-batch waits), except after the steps listed in
    ``finished_outside`` (1-based: a checkpoint save or the end of training completes them)."""
    ev, n = log["events"], log["num_buckets"]
    starts = [i for i, e in enumerate(ev) if e == ("step",)]
    assert n >= 2 and starts, (n, len(starts))  # several buckets, so the chain is exercised
    for k, i in enumerate(starts, 1):
        assert ev[i:i + 3] == [("step",), ("launch", n - 1), ("step_return", True)], ev[i:i + 3]
        after = ev[i + 3:starts[k] if k < len(starts) else len(ev)]
        launches, waited, end = [n - 1], [], None
        for j, e in enumerate(after):  # this step's gathers: until every bucket is waited once
            if e[0] == "launch":
                launches.append(e[1])
            elif e[0] == "wait":
                waited.append(e)
                if len(waited) == n:
                    end = j
                    break
        assert end is not None and launches == list(range(n - 1, -1, -1)), (launches, waited)  # forward order
        assert sorted(w[1] for w in waited) == list(range(n)), waited
        if k in finished_outside:
            assert not any(w[2] for w in waited), waited
        else:  # inside a forward pre-hook, before this step's first gradient
            assert all(w[2] for w in waited), waited
            assert ("grad",) not in after[:end], "a gather was waited after the backward began"


def _opg_dp2(prefix, cache, base):
    """DP=2 with --overlap-param-gather: 10 steps with evaluations (and the EMA swap) between
    steps and a save at step 8, against ``base`` (the same run without the overlap, evaluations
    or save); then a resume from step 8 without the overlap; then a skipped step."""
    import torch
    import torch.distributed as dist

    tmp = os.path.dirname(cache)
    a_dir, b_dir, r_dir = (os.path.join(tmp, d) for d in ("opg_a", "opg_b", "opg_resume"))
    extra = ["--eval-interval", "3", "--eval-iters", "1", "--ema-decay", "0.9", "--eval-ema", "--save-interval", "8"]
    with _record_param_gathers() as log:
        a = _run(argv(prefix, cache, *BASE, *OPG, "--overlap-param-gather", *extra, "--save", a_dir), 10, keep=True)
    res = {"log": log, "loss_equal": a["loss"] == base["loss"],
           "params_equal": all(torch.equal(a["params"][n], base["params"][n]) for n in base["params"])}
    if dist.get_rank() == 0:  # a directory holding only step 8: the resume's newest checkpoint
        os.makedirs(r_dir)
        os.symlink(os.path.join(a_dir, "iter_0000008"), os.path.join(r_dir, "iter_0000008"))
    dist.barrier()
    b = _run(argv(prefix, cache, *BASE, *OPG, *extra, "--load", r_dir, "--save", b_dir), 10, keep=True)
    res["resume_loss_equal"] = b["loss"] == a["loss"][8:]
    res["resume_params_equal"] = all(torch.equal(a["params"][n], b["params"][n]) for n in a["params"])
    res["evals"] = [_evals(os.path.join(d, "logs", "metrics.jsonl")) for d in (a_dir, b_dir)]
    # a skipped step (non-finite gradient) gathers nothing
    opt, buffers = a["out"]["optimizer"], a["out"]["buffers"]
    buffers.data[0] = float("inf")
    with _record_param_gathers() as skip:
        skip_stepped, _ = opt.step(1e-3)
    res["skip"] = (skip_stepped, skip["events"], buffers.unsynced)
    # the EMA swap right after a step, its gathers still in flight: finished before it reads
    buffers.data.zero_()
    opt.step(1e-3)
    pending = buffers.unsynced
    with _record_param_gathers() as ema:
        with opt.ema_weights():
            pass
    res["ema_swap"] = (pending, ema["stale"], buffers.unsynced)
    return res


def _evals(path):
    """{(split, iteration): lm_loss} of a run's metrics.jsonl ({} on ranks that log nothing)."""
    import json

    if not os.path.exists(path):
        return {}
    with open(path) as f:
        recs = [json.loads(line) for line in f]
    return {(r["split"], r["iteration"]): r["lm_loss"] for r in recs if "split" in r}


def _body(rank, world, prefix, cache):
    from megatron_th.parallel.comm import COUNTER

    out = {}
    for name, (w, flags) in LAYOUTS.items():
        if w == world:
            opg = "--overlap-param-gather" in flags
            with _record_param_gathers() if opg else contextlib.nullcontext() as log:
                out[name] = _run(argv(prefix, cache, *BASE, *flags), 10, keep=True)
            g = out[name].pop("out")["groups"]
            out[name]["where"], out[name]["log"] = (g.pp_rank, g.tp_rank, g.dp_rank), log
            if name != "dp2_zero_overlap_buckets":
                out[name].pop("params")
    if world == 2:
        out["opg"] = _opg_dp2(prefix, cache, out["dp2_zero_overlap_buckets"])
        out["dp2_zero_overlap_buckets"].pop("params")
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


def test_overlap_param_gather_dp2_bitwise_eval_save_resume(runs):
    """DP=2: losses and parameters bitwise those without the overlap, with evaluations, the EMA
    swap and a save between steps; the run resumed from step 8 (without the overlap) continues
    bitwise and evaluates the same; no parameter is read while its gather is pending."""
    res = [r["opg"] for r in runs[2][2]]
    for r in res:
        assert r["log"]["stale"] == [], r["log"]["stale"][:5]
        assert r["loss_equal"] and r["params_equal"], "not bitwise the run without the overlap"
        assert r["resume_loss_equal"] and r["resume_params_equal"], "the resume did not continue bitwise"
        _check_gather_events(r["log"], finished_outside={8})
    a, b = res[0]["evals"]  # the logger is rank 0 here
    assert {k for k in a if k[1] > 8} == set(b) and len(b) == 4  # valid and valid_ema at 9, 10
    assert all(a[k] == b[k] for k in b), (a, b)


def test_overlap_param_gather_same_order_on_every_dp_rank(runs):
    """The DP group's collectives (gradient reduce-scatters, parameter all-gathers, the token
    count and checkpoint gathers) are issued in the same order on both DP ranks: the check gloo
    would not make (it matches by tag), as tests/nccl_model.py does for p2p."""
    r0, r1 = (r["opg"]["log"]["dp_ops"] for r in runs[2][2])
    assert r0 == r1 and sum(op == "all_gather" for op, _ in r0) >= 20


def test_overlap_param_gather_skipped_step_gathers_nothing(runs):
    for r in runs[2][2]:
        stepped, events, unsynced = r["opg"]["skip"]
        assert not stepped and unsynced == 0
        assert events == [("step",), ("step_return", False)], events


def test_overlap_param_gather_ema_swap_finishes_pending_gathers(runs):
    for r in runs[2][2]:
        pending, stale, unsynced = r["opg"]["ema_swap"]
        assert pending > 0 and stale == [] and unsynced == 0, (pending, stale[:5], unsynced)


def test_overlap_param_gather_tp2_pp2_dp2_interleaved(runs):
    """TP=2 x PP=2 x DP=2 with two chunks per rank (its parity with one process is
    test_parity_10_steps): every chunk's buckets gathered in the next step's first forwards, the
    last stage's tied head weight included, no parameter read while its gather is pending, and
    the same DP collective order on both DP ranks of each (stage, TP rank)."""
    by_group = {}
    for r in (res["tp2_pp2_dp2_zero_overlap"] for res in runs[2][8]):
        assert r["log"]["stale"] == [], r["log"]["stale"][:5]
        _check_gather_events(r["log"], finished_outside={10})  # the end of training finishes the last
        by_group.setdefault(r["where"][:2], []).append(r["log"]["dp_ops"])
    assert len(by_group) == 4 and all(len(v) == 2 and v[0] == v[1] for v in by_group.values())


@pytest.mark.parametrize("flags,missing", [
    ([], "--use-distributed-optimizer --overlap-grad-reduce"),
    (["--use-distributed-optimizer"], "--overlap-grad-reduce"),
    (["--overlap-grad-reduce"], "--use-distributed-optimizer"),
    (["--use-distributed-optimizer", "--overlap-grad-reduce", "--optimizer", "muon"], "--optimizer muon"),
    (["--use-distributed-optimizer", "--overlap-grad-reduce"], None),
])
def test_overlap_param_gather_requirements(flags, missing):
    """Megatron's requirement: --use-distributed-optimizer --overlap-grad-reduce (error naming
    the missing ones); refused with the whole-parameter Zero-1 of Adafactor / Muon."""
    from megatron_th.config import ConfigError, finalize, parse_config

    cfg, _ = parse_config(["--overlap-param-gather", *flags])
    if missing is None:
        finalize(cfg, 2)
        return
    with pytest.raises(ConfigError, match="--overlap-param-gather") as e:
        finalize(cfg, 2)
    assert missing in str(e.value)
