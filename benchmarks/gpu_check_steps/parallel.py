"""Multi-device steps, run by every rank of one launch (NCCL on GPUs, gloo with --cpu): parity of
each parallel layout with the 1-device reference, save at one layout -> resume at another, and the
pipeline deadlock probe. Every rank runs the same pretrain() calls; rank 0's results are reported."""
from __future__ import annotations

import math
import os
import shutil

from gpu_check_steps import sizes
from gpu_check_steps.common import Context, check, pretrain_argv, read_json, rel_diff, release, run_pretrain

NO_TF32 = "--no-tf32"  # parity on GPU is checked in IEEE fp32: TF32 differs from the reference by ~1e-3


def _reference(ctx: Context, spec: dict) -> tuple[dict | None, str]:
    path = ctx.path("reference.json")
    if not os.path.isfile(path):
        return None, "no 1-device reference (the parity_reference step failed or did not run)"
    ref = read_json(path)
    if ref.get("gbs") != spec["gbs"]:
        return None, f"the reference used global batch {ref.get('gbs')}, this launch needs {spec['gbs']}"
    return ref, ""


def _layouts(ctx: Context) -> dict:
    return sizes.layouts(ctx.world, ctx.profile["parity"]["model"]["num-layers"])


def _compare(step: str, res: dict, ref: dict, spec: dict, first: int, what: str):
    """Losses and grad norms of ``res`` against the reference's steps ``first``, ``first + 1``, ..."""
    n = len(res["losses"])
    dl = rel_diff(res["losses"], ref["losses"][first:first + n])
    dg = rel_diff(res["grad_norms"], ref["grad_norms"][first:first + n])
    ok = dl <= spec["loss_tol"] and dg <= spec["gnorm_tol"]
    return check(step, ok, dl, "max_rel_diff",
                 f"{what}; loss {dl:.1e} (tolerance {spec['loss_tol']:g}), grad norm {dg:.1e} "
                 f"(tolerance {spec['gnorm_tol']:g}) vs 1 device, steps {first + 1}-{first + n}, fp32 {NO_TF32}")


def _checkpoint(ctx: Context) -> str:
    return ctx.path("reshard_ckpt")


def parity(ctx: Context):
    """Each layout of sizes.layouts (TP+SP, 1F1B, interleaved, DP, Zero-1, 3D) trains the parity
    model for the reference's first ``iters`` steps (the learning-rate schedule spans the resumed
    steps too). The layout the reshard step saves from also writes its checkpoint here. Value: max
    relative loss difference."""
    spec = sizes.parity_spec(ctx.profile, ctx.world)
    ref, why = _reference(ctx, spec)
    save, _ = sizes.reshard_pair(ctx.world, spec["model"]["num-layers"])
    if ctx.rank == 0:  # a reused --workdir: the save layout writes a fresh one (long before any rank reads it)
        shutil.rmtree(_checkpoint(ctx), ignore_errors=True)
    for name, flags in _layouts(ctx).items():
        if ref is None:
            yield check(f"parity_{name}", False, None, "max_rel_diff", why)
            continue
        extra = ["--save", _checkpoint(ctx)] if name == save else []
        res = run_pretrain(pretrain_argv(ctx, spec, NO_TF32, *flags, *extra, iters=spec["iters"],
                                         train_dtype=False))
        result = _compare(f"parity_{name}", res, ref, spec, 0,
                          f"{ctx.world} ranks {ctx.profile['backend']}: {' '.join(flags) or 'plain DP'}")
        release(res)
        yield result


parity.names = lambda ctx: [f"parity_{n}" for n in _layouts(ctx)]


def _reshard_name(ctx: Context) -> str:
    save, load = sizes.reshard_pair(ctx.world, ctx.profile["parity"]["model"]["num-layers"])
    return f"reshard_{save}_to_{load}"


def reshard(ctx: Context):
    """Resume at another layout (different TP/PP/DP and optimizer sharding) from the checkpoint the
    save layout wrote after ``iters`` steps in the parity step (written here first if that did not
    run), and train the ``resume_iters`` further steps: they equal the 1-device reference's.
    Value: max relative loss difference of the resumed steps."""
    from megatron_th.training.checkpoint import find_checkpoint

    step = _reshard_name(ctx)
    spec = sizes.parity_spec(ctx.profile, ctx.world)
    ref, why = _reference(ctx, spec)
    if ref is None:
        yield check(step, False, None, "max_rel_diff", why)
        return
    lay = _layouts(ctx)
    save, load = sizes.reshard_pair(ctx.world, spec["model"]["num-layers"])
    n, ck = spec["iters"], _checkpoint(ctx)
    found = find_checkpoint(ck)
    if found is None or not found.endswith(f"{n:07d}"):
        release(run_pretrain(pretrain_argv(ctx, spec, NO_TF32, *lay[save], "--save", ck, iters=n, train_dtype=False)))
    res = run_pretrain(pretrain_argv(ctx, spec, NO_TF32, *lay[load], "--load", ck, train_dtype=False,
                                     iters=n + spec["resume_iters"]))
    result = _compare(step, res, ref, spec, n, f"saved at {save} after {n} steps, resumed at {load}")
    release(res)
    yield result


reshard.names = lambda ctx: [_reshard_name(ctx)]


def pipeline_probe(ctx: Context):
    """The deadlock probe: PP = every rank, one layer per stage (1F1B), then two per stage
    (interleaved, 2 virtual chunks), 2 x PP micro-batches per step so the steady state (send then
    receive in both directions) is reached, every p2p message >= ``min_mib`` MiB on GPU (NCCL sends
    that large complete only when the peer's receive runs: unpaired send/recv orders hang). PASS:
    both finish, with finite losses, inside the step's timeout. Value: MiB per message."""
    import torch

    p, w = ctx.profile["probe"], ctx.world
    nbytes = torch.tensor([], dtype=ctx.dtype).element_size()
    mib = p["mbs"] * p["seq"] * p["hidden"] * nbytes / 2**20
    done = []
    for sched, layers, extra in (("1F1B", w, []),
                                 ("interleaved", 2 * w, ["--num-layers-per-virtual-pipeline-stage", "1"])):
        spec = {"model": sizes.model(layers, p["hidden"], p["heads"], p["groups"], p["ffn"]), "seq": p["seq"],
                "mbs": p["mbs"], "gbs": p["mbs"] * 2 * w, "iters": p["iters"]}
        res = run_pretrain(pretrain_argv(ctx, spec, "--pipeline-model-parallel-size", w, *extra))
        done.append((sched, len(res["losses"]) == p["iters"] and all(math.isfinite(x) for x in res["losses"])))
        release(res)
    ok = all(f for _, f in done) and mib >= p["min_mib"]
    yield check("pipeline_probe", ok, mib, "MiB/message",
                f"PP {w} on {ctx.profile['backend']}, {ctx.profile['dtype']}: "
                + ", ".join(f"{s} {'finished' if f else 'non-finite loss'}" for s, f in done)
                + f"; {2 * w} micro-batches of {p['mbs']} x {p['seq']} x {p['hidden']}"
                + (f" (needs >= {p['min_mib']} MiB)" if mib < p["min_mib"] else ""))
