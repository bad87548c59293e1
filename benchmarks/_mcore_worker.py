"""megatron-core's side of benchmarks/vs_megatron_core.py: its training ranks and the parity check.

Run by vs_megatron_core.py as ``--worker mcore`` (one rank under torch.distributed.run) and
``--worker parity`` (one process); config B and the flags are that file's. megatron-core runs on
CPU with benchmarks/_mcore_cpu_shims.py; its torch.distributed calls are timed
(``time_torch_distributed``) for the breakdown beside ours.
"""
from __future__ import annotations

import json
import math
import sys
import time

from vs_megatron_core import B, CLIP, HERE, LR, ROOT, SEED, WEIGHT_DECAY, parse_layout, threads_for


COMM = {"wall": 0.0, "cpu": 0.0}
"""megatron-core's blocked seconds in torch.distributed (wall, process CPU) on this rank, summed."""


class _TimedWork:
    """An async work handle whose wait() adds to COMM."""

    def __init__(self, work):
        self._work = work

    def wait(self, *a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self._work.wait(*a, **k)
        finally:
            COMM["wall"] += time.perf_counter() - t0
            COMM["cpu"] += time.process_time() - c0

    def __getattr__(self, name):
        return getattr(self._work, name)


def time_torch_distributed() -> None:
    """Wraps the torch.distributed calls megatron-core makes (before it is imported: some of its
    modules bind them at import) so that a blocking call's seconds, and an async one's at its
    wait, add to COMM: megatron-core's counterpart of our COUNTER.blocked / blocked_cpu. A
    coalesced group's exit (it issues and, unless async, waits) is timed as a whole."""
    import contextlib

    import torch.distributed as dist

    def timed(fn):
        def call(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*a, **k)
            if k.get("async_op"):
                return _TimedWork(out) if out is not None else out
            COMM["wall"] += time.perf_counter() - t0
            COMM["cpu"] += time.process_time() - c0
            return out
        return call
    for name in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "_all_gather_base",
                 "_reduce_scatter_base", "broadcast", "all_gather", "reduce_scatter"):
        if hasattr(dist, name):
            setattr(dist, name, timed(getattr(dist, name)))
    batch = dist.batch_isend_irecv  # (isend / irecv stay: P2POp accepts only the originals)
    dist.batch_isend_irecv = lambda ops: [_TimedWork(w) for w in batch(ops)]
    coalescing = dist._coalescing_manager

    @contextlib.contextmanager
    def timed_coalescing(*a, **k):
        with contextlib.ExitStack() as stack:
            cm = stack.enter_context(coalescing(*a, **k))
            yield cm
            t0, c0 = time.perf_counter(), time.process_time()
            stack.close()
            COMM["wall"] += time.perf_counter() - t0
            COMM["cpu"] += time.process_time() - c0
    dist._coalescing_manager = timed_coalescing


def mcore_worker(a) -> int:
    """One rank of megatron-core's training (under torch.distributed.run); the last rank writes one
    JSON line per iteration to ``a.out``, with the step's blocked communication seconds of all ranks
    (``comm_cpu``: summed CPU, ``comm_wall``: mean wall)."""
    sys.path.insert(0, HERE)
    import _mcore_cpu_shims

    time_torch_distributed()
    _mcore_cpu_shims.install()
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    tp, pp, dp = parse_layout(a.layouts[0])
    torch.set_num_threads(threads_for((tp, pp, dp)))
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if world != tp * pp * dp:
        raise SystemExit(f"error: --layouts {a.layouts[0]} needs {tp * pp * dp} processes, got {world}")
    ps.initialize_model_parallel(tp, pp)
    model_parallel_cuda_manual_seed(SEED)
    distopt = dp > 1 and not a.no_distributed_optimizer
    sp = a.sequence_parallel and tp > 1
    s, mbs, gbs = B["seq_length"], B["micro_batch_size"], B["global_batch_size"]
    cfg = TransformerConfig(
        num_layers=B["num_layers"], hidden_size=B["hidden_size"], num_attention_heads=B["num_attention_heads"],
        ffn_hidden_size=B["ffn_hidden_size"], hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sp,
        pipeline_dtype=torch.float32, params_dtype=torch.float32, init_method_std=0.02,
        use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False)
    model = GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=B["vocab_size"], max_sequence_length=s,
                     pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
                     share_embeddings_and_output_weights=True, position_embedding_type="learned_absolute")
    nparams = sum(p.numel() for p in model.parameters())
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=False, overlap_grad_reduce=a.overlap_grad_reduce,
                                            use_distributed_optimizer=distopt)
    model = DistributedDataParallel(cfg, ddp_cfg, model)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=LR, min_lr=LR, weight_decay=WEIGHT_DECAY, clip_grad=CLIP,
                        use_distributed_optimizer=distopt, params_dtype=torch.float32), [model])
    # what Megatron-LM's training.setup_model_and_optimizer / train() wire into the config
    cfg.grad_scale_func = optimizer.scale_loss
    cfg.no_sync_func = model.no_sync
    if a.overlap_grad_reduce:
        cfg.grad_sync_func = model.start_grad_sync
    cfg.finalize_model_grads_func = finalize_model_grads
    forward_backward = get_forward_backward_func()

    gen = torch.Generator().manual_seed(SEED + ps.get_data_parallel_rank())
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]  # True = masked
    position_ids = torch.arange(s).unsqueeze(0).expand(mbs, s)
    loss_mask = torch.ones(mbs, s)

    def batches():
        while True:  # every TP rank of a DP rank draws the same batch (same generator seed)
            t = torch.randint(0, 8000, (mbs, s + 1), generator=gen)
            yield t[:, :-1].contiguous(), t[:, 1:].contiguous()

    data = batches()

    def forward_step(data_iterator, m):
        tokens, labels = next(data_iterator)
        out = m(tokens, position_ids, mask, labels=labels)

        def loss_func(per_token):
            loss = (per_token.float() * loss_mask).sum() / loss_mask.sum()
            return loss, {"lm loss": loss.detach().clone()}
        return out, loss_func

    m_micro = gbs // mbs // dp
    is_writer = dist.get_rank() == world - 1  # last stage, last TP and DP rank
    out = open(a.out, "w") if is_writer else None
    for it in range(1, a.iters + 1):
        t0 = time.perf_counter()
        comm0 = dict(COMM)
        model.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(forward_step_func=forward_step, data_iterator=data, model=model,
                                  num_microbatches=m_micro, seq_length=s, micro_batch_size=mbs,
                                  decoder_seq_length=s, forward_only=False)
        _, grad_norm, _ = optimizer.step()
        loss = torch.zeros(1)
        if ps.is_pipeline_last_stage():  # Megatron-LM's train_step: averaged over micro-batches and DP
            loss = torch.stack([x["lm loss"] for x in losses]).mean().reshape(1)
            dist.all_reduce(loss, group=ps.get_data_parallel_group())
            loss /= dp
        dt = time.perf_counter() - t0
        spent = torch.tensor([COMM["cpu"] - comm0["cpu"], COMM["wall"] - comm0["wall"]], dtype=torch.float64)
        dist.all_reduce(spent)  # outside every step's window: not in any step's figures
        if out is not None:
            out.write(json.dumps({"iteration": it, "tokens_per_sec": gbs * s / dt, "lm_loss": float(loss),
                                  "grad_norm": float(grad_norm), "num_parameters": nparams, "step_time": dt,
                                  "comm_cpu": float(spent[0]), "comm_wall": float(spent[1]) / world}) + "\n")
            out.flush()
    if out is not None:
        out.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0




# ---- parity: our initial weights in megatron-core, one micro-batch ---------------------------------
def parity_worker(a) -> int:
    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    import _mcore_cpu_shims

    _mcore_cpu_shims.install()
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_th.config import Config, finalize
    from megatron_th.model.gpt import build_model

    torch.set_num_threads(2)
    dist.init_process_group("gloo")
    ps.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(SEED)
    s = B["seq_length"]
    cfg = TransformerConfig(num_layers=B["num_layers"], hidden_size=B["hidden_size"],
                            num_attention_heads=B["num_attention_heads"], ffn_hidden_size=B["ffn_hidden_size"],
                            hidden_dropout=0.0, attention_dropout=0.0, pipeline_dtype=torch.float32,
                            use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
                            bias_dropout_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)
    theirs = GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=B["vocab_size"], max_sequence_length=s,
                      share_embeddings_and_output_weights=True)
    c = Config()
    m = c.model
    for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "seq_length", "vocab_size"):
        setattr(m, k, B[k])
    m.hidden_dropout = m.attention_dropout = 0.0
    finalize(c)
    ours = build_model(m, B["vocab_size"], seed=SEED)
    n_ours, n_theirs = (sum(p.numel() for p in x.parameters()) for x in (ours, theirs))

    def their_name(n: str) -> str:  # the parameter names are Megatron's on both sides but for the prefixes
        return "decoder." + n if n.startswith("layers.") else n.replace("final_norm", "decoder.final_layernorm")
    theirs_by_name = dict(theirs.named_parameters())
    with torch.no_grad():
        for n, p in ours.named_parameters():
            theirs_by_name[their_name(n)].copy_(p)
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 8000, (1, s + 1), generator=gen)
    tokens, labels = t[:, :-1], t[:, 1:]
    pos = torch.arange(s).unsqueeze(0)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
    lo = ours(tokens=tokens, labels=labels, position_ids=pos).mean()
    lo.backward()
    lt = theirs(tokens, pos, mask, labels=labels).mean()
    lt.backward()
    rel = max(float((theirs_by_name[their_name(n)].grad - p.grad).abs().max() / p.grad.abs().max())
              for n, p in ours.named_parameters())
    res = {"num_parameters_ours": n_ours, "num_parameters_mcore": n_theirs, "loss_ours": float(lo),
           "loss_mcore": float(lt), "loss_abs_diff": abs(float(lo) - float(lt)), "grad_max_rel_diff": rel,
           "ln_vocab": math.log(B["vocab_size"])}
    with open(a.out, "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()
    return 0
