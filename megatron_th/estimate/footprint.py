"""Memory of one GPU by component, for every pipeline rank: static state (memory.py), the
activations the pipeline schedule keeps in flight (activations.py), and the transients: the loss's
(loss_memory.py) and, in fp16, the fp32 gradient copies of the optimizer step. The peak rank
decides whether a layout fits.
"""
from __future__ import annotations

from megatron_th.data.tokenizer import padded_vocab_size
from megatron_th.estimate import activations as act
from megatron_th.estimate import loss_memory
from megatron_th.estimate.memory import grad_bytes, precision, static_bytes
from megatron_th.estimate.params import rank_params, virtual_stages
from megatron_th.training.optimizers.state_bytes import with_optimizer_state


def layout(cfg, gpus: int) -> dict:
    p, d = cfg.parallel, cfg.data
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    dp = gpus // (tp * pp)
    per = p.num_layers_per_virtual_pipeline_stage
    v = (cfg.model.num_layers // pp) // per if per else 1
    return {"gpus": gpus, "tp": tp, "pp": pp, "dp": dp, "virtual_stages": v,
            "sequence_parallel": bool(p.sequence_parallel and tp > 1), "zero1": p.use_distributed_optimizer,
            "recompute": cfg.model.recompute_granularity, "micro_batch_size": d.micro_batch_size,
            "global_batch_size": d.global_batch_size,
            "micro_batches": d.global_batch_size // (d.micro_batch_size * dp)}


def rank_memory(cfg, gpus: int, vocab_size: int, device: str = "cuda") -> list[dict]:
    """Bytes per component on each PP rank (TP rank 0, DP rank 0; the others hold the same or,
    under Zero-1, up to a bucket's padding less). ``cfg`` must be finalized for ``gpus``."""
    m, lay = cfg.model, layout(cfg, gpus)
    tp, pp, dp, v, sp = lay["tp"], lay["pp"], lay["dp"], lay["virtual_stages"], lay["sequence_parallel"]
    mb, s, micro = lay["micro_batch_size"], m.seq_length, lay["micro_batches"]
    prec = precision(cfg.optim)
    k = act.kernels_for(m, prec, device)
    vp = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by)
    if vp % tp:  # as model/parallelize.py refuses it
        raise ValueError(f"padded vocab {vp} is not divisible by --tensor-model-parallel-size {tp}; choose "
                         f"--make-vocab-size-divisible-by as a multiple of {tp}")
    out = []
    for r in range(pp):
        named = rank_params(m, cfg.parallel, vp, r)
        st = static_bytes([n for _, n in named], prec, grad_bytes(cfg), dp, lay["zero1"],
                          cfg.parallel.ddp_bucket_size)
        st = with_optimizer_state(st, cfg, vp, r, dp)  # --optimizer's state and the EMA (training/optimizers)
        chunks = virtual_stages(m, cfg.parallel, r)
        parts = [act.chunk_bytes(m, s, mb, vocab_size, vp, tp, sp, lay["recompute"], k,
                                 c["layer_range"][1] - c["layer_range"][0], c["pre_process"], c["post_process"],
                                 first_layer=c["layer_range"][0])
                 for c in chunks]
        peak, n_live = act.inflight(pp, r, micro, v, [sum(pt.values()) for pt in parts])
        p2p = act.p2p_send_bytes(pp, r, micro, v, s, mb, m.hidden_size, tp, sp, k.act_bytes)
        last = any(c["post_process"] for c in chunks)
        # what the loss allocates and frees in its forward or backward (logits, their gradients or the
        # chunked loss's tiles and accumulators), on top of the saved activations
        logits_transient = (loss_memory.transient_bytes(mb * s, m.hidden_size, vocab_size, vp, tp, k.act_bytes)
                            if last else 0)
        # full recompute: the backward of each layer re-runs its forward and holds that one layer's
        # activations (as without recompute) on top of the stored inputs; the loss's transient is
        # freed by then, so the larger of the two adds to the in-flight peak
        recompute_transient = (max(sum(act.layer_terms(m, s, mb, tp, sp, None, k, window=w).values())
                                   for w in set(act.layer_windows(m, 0, m.num_layers)))
                               if lay["recompute"] == "full" else 0)
        # fp16: the unscaled fp32 copies of the gradients exist during the optimizer step
        step_transient = st["owned_numel"] * 4 if (prec == "fp16" and grad_bytes(cfg) == 2) else 0
        layers = sum(c["layer_range"][1] - c["layer_range"][0] for c in chunks)
        per_layer = act.layer_terms(m, s, mb, tp, sp, lay["recompute"], k)
        rec = {"pp_rank": r, "layers": layers, "first_stage": any(c["pre_process"] for c in chunks),
               "last_stage": last, "params": st["numel"], "weights": st["params"],
               "grads": st["grads"], "optimizer": st["master"] + st["moments"], "master": st["master"],
               "moments": st["moments"], "activations": peak, "inflight_chunks": n_live,
               "activation_per_layer": sum(per_layer.values()), "activation_terms": per_layer,
               "activation_parts": [dict(pt) for pt in parts], "pipeline_send_bytes": p2p,
               "logits_transient": logits_transient, "recompute_transient": recompute_transient,
               "step_transient": step_transient,
               "static": st["total"], "buffer_numel": st["buffer_numel"], "owned_numel": st["owned_numel"]}
        rec["total"] = st["total"] + max(peak + max(logits_transient, recompute_transient), step_transient)
        out.append(rec)
    return out


def peak_rank(ranks: list[dict]) -> dict:
    return max(ranks, key=lambda r: r["total"])
