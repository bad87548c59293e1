"""When the peak GPU does not fit: the cheapest change of the layout that does.

Candidates combine, with the GPU count fixed: Zero-1 on; recompute selective or full; the
micro-batch halved (down to 1); a larger TP (a power of two up to 8, sequence parallelism on) or
PP (a divisor of the layers; interleaving dropped). Each change costs (a rough ranking of what it
does to throughput): Zero-1 1, selective recompute 2, each halving of the micro-batch 3, each
doubling of TP 4, of PP 5, full recompute 8. Candidates are tried by increasing total cost, then
fewer changes, then smaller TP x PP; the first whose every rank fits is the answer. Invalid
candidates (what ``finalize`` refuses, e.g. recompute with TP and attention dropout) are skipped.
"""
from __future__ import annotations

import copy
import itertools
import math

from megatron_th.config import ConfigError, finalize
from megatron_th.estimate.footprint import layout, peak_rank, rank_memory


def _candidates(cfg, gpus: int) -> list[dict]:
    m, p, d = cfg.model, cfg.parallel, cfg.data
    tp0, pp0 = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    zero = [False, True] if not p.use_distributed_optimizer else [False]
    order = [None, "selective", "full"]
    rec = [r for r in order if order.index(r) > order.index(m.recompute_granularity)]
    mbs = [d.micro_batch_size // 2 ** i for i in range(1, 1 + int(math.log2(d.micro_batch_size)))]
    tps = [t for t in (1, 2, 4, 8) if t >= tp0 and t <= gpus]
    pps = [q for q in range(pp0, m.num_layers + 1) if m.num_layers % q == 0]
    out = []
    for z, r, b, tp, pp in itertools.product(zero, [None] + rec, [None] + mbs, tps, pps):
        if gpus % (tp * pp) or (z and gpus // (tp * pp) == 1):
            continue
        cost, changes = 0.0, {}
        if z:
            cost, changes["use_distributed_optimizer"] = cost + 1, True
        if r:
            cost, changes["recompute_granularity"] = cost + (2 if r == "selective" else 8), r
        if b:
            cost, changes["micro_batch_size"] = cost + 3 * math.log2(d.micro_batch_size / b), b
        if tp != tp0:
            cost, changes["tensor_model_parallel_size"] = cost + 4 * math.log2(tp / tp0), tp
        if pp != pp0:
            cost, changes["pipeline_model_parallel_size"] = cost + 5 * math.log2(pp / pp0), pp
        if changes:
            out.append({"cost": cost, "changes": changes, "tp_pp": tp * pp})
    out.sort(key=lambda c: (c["cost"], len(c["changes"]), c["tp_pp"], sorted(c["changes"].items(), key=str)))
    return out


def apply(cfg, changes: dict):
    new = copy.deepcopy(cfg)
    for k, v in changes.items():
        for sec in (new.model, new.parallel, new.data):
            if hasattr(sec, k):
                setattr(sec, k, v)
    if "pipeline_model_parallel_size" in changes:
        new.parallel.num_layers_per_virtual_pipeline_stage = None
        new.parallel.decoder_first_pipeline_num_layers = new.parallel.decoder_last_pipeline_num_layers = None
    if new.parallel.tensor_model_parallel_size > 1 and "tensor_model_parallel_size" in changes:
        new.parallel.sequence_parallel = True
    return new


def as_flags(changes: dict, cfg) -> str:
    out = []
    for k, v in changes.items():
        flag = "--" + k.replace("_", "-")
        out.append(flag if v is True else f"{flag} {v}")
        if k == "tensor_model_parallel_size" and not cfg.parallel.sequence_parallel:
            out.append("--sequence-parallel")
    return " ".join(out)


def smallest_change(cfg, gpus: int, vocab_size: int, capacity_bytes: float, device: str = "cuda") -> dict:
    """{"fits": bool, "changes", "flags", "peak" bytes, "layout", "tried"}: the first candidate
    that fits, else the one with the smallest peak."""
    best, tried = None, 0
    for cand in _candidates(cfg, gpus):
        new = apply(cfg, cand["changes"])
        try:
            finalize(new, gpus)
            peak = peak_rank(rank_memory(new, gpus, vocab_size, device))["total"]
        except (ConfigError, ValueError):
            continue
        tried += 1
        rec = {"changes": cand["changes"], "flags": as_flags(cand["changes"], cfg), "peak": peak,
               "cost": cand["cost"], "layout": layout(new, gpus)}
        if peak <= capacity_bytes:
            return dict(rec, fits=True, tried=tried)
        if best is None or peak < best["peak"]:
            best = rec
    return dict(best or {}, fits=False, tried=tried)
