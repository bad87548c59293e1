"""Will it fit, how long, what cost, what loss: estimates from the config and the 3D layout.

``estimate(cfg, gpus, ...)`` returns a JSON-able dict; ``format_report`` turns it into the table
``tools/estimate.py`` prints. Parts: params.py (counts per model / stage / rank), memory.py (weights,
gradients, optimizer, checkpoint bytes), activations.py (Korthikanti-style activation terms for our
block, pipeline in-flight), loss_memory.py (the LM loss, chunked or not), footprint.py (memory per
GPU), hardware.py (GPU catalog), scaling.py (Chinchilla), advice.py (smallest change that fits), report.py (the table). Formulas and sources:
docs/estimate.md.
"""
from __future__ import annotations

import copy

from megatron_th.config import finalize
from megatron_th.data.tokenizer import padded_vocab_size
from megatron_th.estimate import activations as act
from megatron_th.estimate import footprint, loss_memory, params, scaling
from megatron_th.estimate.hardware import get_gpu
from megatron_th.estimate.memory import (bytes_per_param, checkpoint_bytes, deepspeed_checkpoint_bytes, grad_bytes,
                                         precision)
from megatron_th.model.flops import flops_per_iteration
from megatron_th.training.optimizers.state_bytes import per_param as optimizer_state_per_param

GiB = 2 ** 30

__all__ = ["estimate", "format_report", "GiB"]


def _flops(cfg, vocab: int, vp: int, gpus: int, peak_tflops: float, mfu: float, tokens: float) -> dict:
    m, d, tp = cfg.model, cfg.data, cfg.parallel.tensor_model_parallel_size
    gbs, s = d.global_batch_size, m.seq_length
    # the chunked loss computes its logits again in backward (hardware FLOPs only)
    again = loss_memory.loss_plan(d.micro_batch_size * s, vocab, vp, tp)["chunked"]
    model = flops_per_iteration(m, gbs, s, vp, recompute=False)
    hardware = flops_per_iteration(m, gbs, s, vp, recompute=m.recompute_granularity, logits_recompute=again)
    full = flops_per_iteration(m, gbs, s, vp, recompute="full", logits_recompute=again)
    per_iter_tokens = gbs * s
    out = {"loss_recomputes_logits": again, "model_per_token": model / per_iter_tokens,
           "hardware_per_token": hardware / per_iter_tokens,
           "model_per_iteration": model, "hardware_per_iteration": hardware,
           "with_full_recompute_per_iteration": full, "tokens_per_iteration": per_iter_tokens}
    if peak_tflops and mfu:
        seconds = model / (gpus * peak_tflops * 1e12 * mfu)
        iters = tokens / per_iter_tokens
        total = seconds * iters
        out.update(mfu=mfu, hfu=mfu * hardware / model, seconds_per_iteration=seconds,
                   model_tflops_per_gpu=model / seconds / gpus / 1e12,
                   hardware_tflops_per_gpu=hardware / seconds / gpus / 1e12,
                   tokens_per_second=per_iter_tokens / seconds, iterations=iters, seconds=total,
                   gpu_hours=total * gpus / 3600.0)
    return out


def _comm(cfg, lay: dict, rank: dict) -> dict:
    """Bytes one rank sends/receives per step (parallel/volume.py; SP weight-gradient sums left out)."""
    from megatron_th.parallel.volume import tp_step_bytes

    m = cfg.model
    b, s, h, mcount = lay["micro_batch_size"], m.seq_length, m.hidden_size, lay["micro_batches"]
    dbytes = 4 if precision(cfg.optim) == "fp32" else 2
    out = {"tp": 0, "pp": rank["pipeline_send_bytes"], "dp": 0}
    if lay["tp"] > 1:
        out["tp"] = sum(tp_step_bytes(rank["layers"], b, s, h, mcount, lay["sequence_parallel"], dbytes,
                                      has_embedding=rank["first_stage"], has_head=rank["last_stage"]).values())
    if lay["dp"] > 1:
        grads = rank["buffer_numel"] * grad_bytes(cfg)
        out["dp"] = grads + (rank["buffer_numel"] * dbytes if lay["zero1"] else 0)
    return out


def estimate(cfg, gpus: int | None = None, gpu: str = "a100-80g", vocab_size: int | None = None,
             train_tokens: float | None = None, mfu: float = 0.4, price_per_gpu_hour: float | None = None,
             device: str = "cuda", headroom: float = 0.1, advise: bool = True) -> dict:
    """Everything the report shows. ``cfg`` is not modified; ``gpus`` defaults to TP x PP (DP 1);
    ``vocab_size`` is required (the tokenizer's); ``train_tokens`` defaults to the configured run
    (train_iters x global batch x seq_length)."""
    if vocab_size is None or vocab_size <= 0:
        raise ValueError("--vocab-size must be a positive number (or give a tokenizer)")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    if not 0 <= headroom < 1:
        raise ValueError(f"--memory-headroom must be in [0, 1), got {headroom}")
    cfg = copy.deepcopy(cfg)
    par = cfg.parallel
    tp_pp = par.tensor_model_parallel_size * par.pipeline_model_parallel_size
    gpus = gpus or tp_pp
    if gpus <= 0 or gpus % tp_pp:
        raise ValueError(f"--gpus {gpus} is not a positive multiple of --tensor-model-parallel-size x "
                         f"--pipeline-model-parallel-size = {tp_pp}")
    finalize(cfg, gpus)
    card = get_gpu(gpu)
    prec = precision(cfg.optim)
    m, d = cfg.model, cfg.data
    vp = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by)
    lay = footprint.layout(cfg, gpus)
    counts = params.count(m, vocab_size)
    stages = []
    for r in range(lay["pp"]):
        chunks = params.virtual_stages(m, par, r)
        logical = sum(q.numel for c in chunks for q in params.stage_params(
            m, vp, c["layer_range"], c["pre_process"], c["post_process"]))
        stages.append({"pp_rank": r, "layers": [c["layer_range"] for c in chunks], "params": logical})
    ranks = footprint.rank_memory(cfg, gpus, vocab_size, device)
    state_pp = optimizer_state_per_param(cfg, vp)  # --optimizer's state + EMA, B/param (training/optimizers)
    peak = footprint.peak_rank(ranks)
    for st, rk in zip(stages, ranks):
        st["params_per_rank"] = rk["params"]
    tokens = train_tokens if train_tokens is not None else cfg.train.train_iters * d.global_batch_size * m.seq_length
    peak_tflops = card.peak(prec)
    flops = _flops(cfg, vocab_size, vp, gpus, peak_tflops, mfu, tokens)
    if price_per_gpu_hour is not None and "gpu_hours" in flops:
        flops["cost"] = flops["gpu_hours"] * price_per_gpu_hour
    capacity = card.memory_gib * GiB
    usable = capacity * (1 - headroom)
    tied_copy = counts["word_embedding"] if (lay["pp"] > 1 and not m.untie_embeddings_and_output_weights) else 0
    k = act.kernels_for(m, prec, device)
    by_recompute = {str(rc): sum(act.layer_terms(m, m.seq_length, d.micro_batch_size, lay["tp"], lay["sequence_parallel"],
                                                 rc, k).values()) for rc in (None, "selective", "full")}
    out = {
        "model": {"layers": m.num_layers, "hidden": m.hidden_size, "heads": m.num_attention_heads,
                  "query_groups": m.num_query_groups, "ffn": m.ffn_hidden_size, "seq_length": m.seq_length,
                  "vocab": vocab_size, "padded_vocab": vp, "precision": prec, "swiglu": m.swiglu,
                  "geglu": m.geglu, "normalization": m.normalization, "position_embedding": m.position_embedding_type,
                  "kv_channels": m.kv_channels, "qk_layernorm": m.qk_layernorm, "sandwich_norm": m.sandwich_norm,
                  "apply_layernorm_1p": m.apply_layernorm_1p, "window_size": m.window_size,
                  "sliding_layers": sum(w is not None for w in act.layer_windows(m, 0, m.num_layers)),
                  "rope_scaling": m.rope_scaling_type if m.use_rope_scaling else None,
                  "loss": "chunked" if loss_memory.loss_plan(d.micro_batch_size * m.seq_length, vocab_size, vp,
                                                              lay["tp"])["chunked"] else "full logits"},
        "layout": lay, "gpu": {"name": card.name, "peak_tflops": peak_tflops, "memory_gib": card.memory_gib,
                               "headroom": headroom, "usable_bytes": usable},
        "device_kernels": device,
        "params": dict(counts, stages=stages, max_per_rank=max(r["params"] for r in ranks)),
        "flops": flops, "train_tokens": tokens, "price_per_gpu_hour": price_per_gpu_hour,
        "memory": {"ranks": ranks, "peak_pp_rank": peak["pp_rank"], "peak": peak["total"],
                   "fits": peak["total"] <= usable,
                   "bytes_per_param": bytes_per_param(prec, lay["dp"], lay["zero1"], grad_bytes(cfg), state_pp),
                   "bytes_per_param_zero1": bytes_per_param(prec, lay["dp"], True, grad_bytes(cfg), state_pp),
                   "activation_per_layer_by_recompute": by_recompute},
        "checkpoint": {"ours": checkpoint_bytes(counts["total"], tied_copy, prec, gpus, lay["tp"], device, state_pp),
                       "deepspeed_fp16": deepspeed_checkpoint_bytes(counts["total"])},
        "chinchilla": scaling.chinchilla(counts["total"], tokens),
        "comm_per_step": _comm(cfg, lay, peak),
    }
    if advise and not out["memory"]["fits"]:
        from megatron_th.estimate.advice import smallest_change

        out["advice"] = smallest_change(cfg, gpus, vocab_size, usable, device)
    return out


def format_report(est: dict) -> str:
    from megatron_th.estimate.report import format_report as _fmt

    return _fmt(est)
