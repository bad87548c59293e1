"""One-device training steps: loss falls, save -> resume, Zero-1 save memory, host syncs per step,
throughput / MFU, and the 1-device reference the multi-device parity steps compare with."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics

from gpu_check_steps import sizes
from gpu_check_steps.common import (Context, check, pretrain_argv, rel_diff, release, run_pretrain, skip,
                                    write_json)

DOCS = ["--reset-attention-mask", "--reset-position-ids"]  # packed documents: the attention backends' hard case


def train_loss_falls(ctx: Context):
    """~100M model (GPU, bf16) on the embedded corpus: the mean loss of the last 5 steps is below the
    first 5 by more than ``min_drop`` nats. Value: the drop."""
    if ctx.gpu_missing():
        yield skip("train_loss_falls", ctx.gpu_missing(), "nats")
        return
    spec = ctx.profile["train"]
    res = run_pretrain(pretrain_argv(ctx, spec, log_interval=10))
    losses = res["losses"]
    del res
    release()
    first, last = statistics.fmean(losses[:5]), statistics.fmean(losses[-5:])
    drop = first - last if all(math.isfinite(x) for x in losses) else float("nan")
    yield check("train_loss_falls", drop > spec["min_drop"], drop, "nats",
                f"{ctx.profile['dtype']}, {len(losses)} steps: loss {first:.3f} -> {last:.3f} "
                f"(mean of first/last 5), needs a drop > {spec['min_drop']}")


def save_resume(ctx: Context):
    """N steps uninterrupted vs N/2 steps, save, resume for the rest: losses equal within ``tol``
    (relative; bf16 kernels are not bitwise deterministic, fp32 on CPU is). Value: max relative diff."""
    if ctx.gpu_missing():
        yield skip("resume_matches", ctx.gpu_missing(), "max_rel_diff")
        return
    spec = ctx.profile["resume"]
    n, k, ck = spec["iters"], spec["iters"] // 2, ctx.path("resume_ckpt")
    shutil.rmtree(ck, ignore_errors=True)  # a reused --workdir: no checkpoint from an earlier check
    runs = []
    for extra, iters in (((), n), (("--save", ck), k), (("--load", ck, "--save", ck), n)):
        res = run_pretrain(pretrain_argv(ctx, spec, *extra, iters=iters))
        runs.append((res["losses"], res["grad_norms"]))
        release(res)
    shutil.rmtree(ck, ignore_errors=True)
    (full, full_gn), (first, first_gn), (second, second_gn) = runs
    diff, gdiff = rel_diff(first + second, full), rel_diff(first_gn + second_gn, full_gn)
    yield check("resume_matches", max(diff, gdiff) <= spec["tol"], diff, "max_rel_diff",
                f"{ctx.profile['dtype']}: {k} steps + save + resume to {n} vs {n} uninterrupted; loss {diff:.1e}, "
                f"grad norm {gdiff:.1e} (tolerance {spec['tol']:g}); steps {len(first)}+{len(second)} vs {len(full)}")


def _bucket_bytes(res: dict, spec: dict) -> tuple[int, int]:
    """(largest gradient bucket in fp32 bytes, whole buffer in fp32 bytes) of the run."""
    buffers = res.get("buffers")
    if buffers is not None and getattr(buffers, "buckets", None):
        sizes = [b.end - b.start for b in buffers.buckets]
        return 4 * max(sizes), 4 * sum(sizes)
    numels = [p.numel() for _, p in res["named_params"]]  # a bucket closes once it holds >= --ddp-bucket-size
    return 4 * max(spec["bucket"] + max(numels), max(numels)), 4 * sum(numels)


def zero1_save_memory(ctx: Context):
    """Zero-1 run, then its checkpoint save under a memory probe. GPU: extra device memory at the
    save's peak (torch.cuda.max_memory_allocated) <= ``factor`` x the largest fp32 bucket. CPU: the
    largest single allocation (megatron_th.utils.alloc_trace.record_allocations) <= that bucket.
    Gathering whole fp32 optimizer states instead (~16 B/param on every DP rank) fails. Value: MiB."""
    import torch

    import megatron_th.training.pretrain as pt

    name = "zero1_save_peak"
    if ctx.gpu_missing():
        yield skip(name, ctx.gpu_missing(), "MiB")
        return
    cuda = ctx.device.type == "cuda"
    record = None
    if not cuda:
        try:
            from megatron_th.utils.alloc_trace import record_allocations as record
        except ImportError:
            yield skip(name, "megatron_th.utils.alloc_trace is not available in this version", "MiB")
            return
    spec, seen, real = ctx.profile["zero1"], [], pt.save_state

    def measured_save(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = real(*args, **kwargs)
            torch.cuda.synchronize()
            seen.append((torch.cuda.max_memory_allocated() - base, "max_memory_allocated - before"))
        else:
            with record(ctx.device) as rec:
                out = real(*args, **kwargs)
            big = rec.largest()
            seen.append((rec.max_bytes, f"largest allocation {big.op} {list(big.shape)}" if big else "none"))
        return out

    ck = ctx.path("zero1_ckpt")
    shutil.rmtree(ck, ignore_errors=True)
    pt.save_state = measured_save
    try:
        res = run_pretrain(pretrain_argv(ctx, spec, "--use-distributed-optimizer", "--ddp-bucket-size",
                                         spec["bucket"], "--save", ck))
    finally:
        pt.save_state = real
    bucket, whole = _bucket_bytes(res, spec)
    del res
    release()
    shutil.rmtree(ck, ignore_errors=True)
    if not seen:
        yield check(name, False, None, "MiB", "pretrain did not call save_state")
        return
    peak, how = max(seen)
    limit = spec["factor"] * bucket
    yield check(name, peak <= limit, peak / 2**20, "MiB",
                f"{how}; limit {limit / 2**20:.2f} MiB = {spec['factor']} x largest fp32 bucket; the whole fp32 "
                f"buffer is {whole / 2**20:.2f} MiB")


def _layers(stepper) -> dict:
    """name -> transformer layer of every model chunk the Stepper runs (regions for the counter)."""
    out = {}
    for i, chunk in enumerate(getattr(stepper, "chunks", [])):
        layers = getattr(getattr(chunk, "_orig_mod", chunk), "layers", None)
        for n, m in (layers.items() if layers is not None else ()):
            out[f"{i}.{n}"] = m
    return out


def host_syncs(ctx: Context):
    """Host-device syncs in the forward+backward of one training step (Stepper.train), with packed
    documents, counted by megatron_th.utils.host_syncs.count_host_syncs: the same count with L and
    with more layers (none per layer), and none inside a layer. Value: syncs in the last step."""
    name = "host_syncs"
    if ctx.gpu_missing():
        yield skip(name, ctx.gpu_missing(), "syncs/step")
        return
    try:
        from megatron_th.utils.host_syncs import count_host_syncs
    except ImportError:
        yield skip(name, "megatron_th.utils.host_syncs is not available in this version", "syncs/step")
        return
    from megatron_th.training.step import Stepper

    spec = ctx.profile["syncs"]
    real, counts = Stepper.train, {}
    for layers in (spec["model"]["num-layers"], spec["more_layers"]):
        steps = counts[layers] = []

        def counted(self, *args, _steps=steps, **kwargs):
            regions = _layers(self)
            with count_host_syncs(regions=regions) as c:
                out = real(self, *args, **kwargs)
            _steps.append((c.count, c.inside if regions else None, dict(getattr(c, "by_kind", {}))))
            return out

        Stepper.train = counted
        try:
            run_pretrain(pretrain_argv(ctx, spec, *DOCS, "--num-layers", layers))
        finally:
            Stepper.train = real
        release()
    (l1, a), (l2, b) = counts.items()
    micro = spec["gbs"] // spec["mbs"]
    ok = a[-1][0] == b[-1][0] and all(x[1] == 0 for x in a + b)  # None: layers not found, counted as a FAIL
    yield check(name, ok, a[-1][0], "syncs/step",
                f"last step: {a[-1][0]} with {l1} layers, {b[-1][0]} with {l2} ({micro} micro-batches, "
                f"documents on, attention auto); inside layers {a[-1][1]}/{b[-1][1]}; kinds {a[-1][2]}")


def throughput(ctx: Context):
    """A ~1B model (GPU, bf16, no document masking): tokens/s, model TFLOP/s per device and MFU from
    pretrain's metrics.jsonl (last --log-interval window, after warm-up). MFU must lie in (0, 100%];
    above 100% the peak it divides by is wrong."""
    import torch

    names = ("throughput_tokens", "throughput_tflops", "throughput_mfu")
    units = ("tokens/s", "TFLOP/s", "%")
    why = ctx.gpu_missing()
    spec = ctx.profile["throughput"]
    if not why and ctx.device.type == "cuda":
        gib = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
        if gib < spec["min_memory_gib"]:
            why = f"the ~1B model needs ~{spec['min_memory_gib']} GiB; this GPU has {gib:.0f} GiB"
    if why:
        for n, u in zip(names, units):
            yield skip(n, why, u)
        return
    logs = ctx.path("throughput_logs")
    run_pretrain(pretrain_argv(ctx, spec, "--log-dir", logs, measure_peak=True))
    release()
    with open(os.path.join(logs, "metrics.jsonl"), encoding="utf-8") as f:
        rec = [json.loads(line) for line in f if line.strip()][-1]
    mfu = rec.get("mfu")
    peak = f"peak {rec.get('peak_tflops', 'n/a')} TFLOP/s ({rec.get('peak_source', 'source not logged')})"
    where = f"iterations {rec['iteration'] - spec['log_interval'] + 1}-{rec['iteration']}, {ctx.profile['dtype']}"
    yield check(names[0], rec["tokens_per_sec"] > 0, rec["tokens_per_sec"], units[0],
                f"{where}, seq {spec['seq']}, global batch {spec['gbs']}")
    yield check(names[1], rec["tflops"] > 0, rec["tflops"], units[1], f"model FLOPs per device; {where}")
    yield check(names[2], mfu is not None and 0 < mfu <= 1, None if mfu is None else 100 * mfu, units[2],
                f"{peak}; above 100% means a wrong peak")


def parity_reference(ctx: Context):
    """The parity model on one device, fp32, --no-tf32: per-step loss and grad norm, written to
    reference.json for the multi-device steps. Value: the last loss."""
    why, world = ctx.gpu_missing(), ctx.dist_world()
    if not why and world < 2:
        why = f"{world} GPU: no multi-GPU steps to compare with"
    if why:
        yield skip("parity_reference", why, "nats")
        return
    spec = sizes.parity_spec(ctx.profile, world)
    res = run_pretrain(pretrain_argv(ctx, spec, "--no-tf32", iters=spec["schedule"], train_dtype=False))
    out = {"losses": res["losses"], "grad_norms": res["grad_norms"], "gbs": spec["gbs"]}
    del res
    release()
    write_json(ctx.path("reference.json"), out)
    ok = len(out["losses"]) == spec["schedule"] and all(math.isfinite(x) for x in out["losses"] + out["grad_norms"])
    yield check("parity_reference", ok, out["losses"][-1] if out["losses"] else None, "nats",
                f"1 device, fp32, --no-tf32, {spec['schedule']} steps, global batch {spec['gbs']}: the baseline "
                f"of the parity_* (steps 1-{spec['iters']}) and reshard (the rest) steps")
