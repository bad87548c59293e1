"""The pretraining loop: build -> (resume) -> train / evaluate / log -> save."""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
import time

import torch

from megatron_th.config import ConfigError, finalize, parse_config
from megatron_th.data.embedded import DEFAULT_TOKENIZER
from megatron_th.data.gpt_dataset import BlendedDataset
from megatron_th.data.prefetch import Prefetcher
from megatron_th.data.tokenizer import load_tokenizer, model_vocab_size
from megatron_th.model.flops import flops_per_iteration
from megatron_th.model.gpt import GPTModel
from megatron_th.parallel import comm, host_sync
from megatron_th.parallel.data_parallel import GradBuffers
from megatron_th.parallel.grads import TIED, finalize_grads, norm_weights, sq_norm_reducer
from megatron_th.parallel.groups import ParallelGroups, init_distributed, shutdown_distributed
from megatron_th.parallel.rng import stage_seed
from megatron_th.parallel.stages import build_chunks
from megatron_th.training.checkpoint import CheckpointError
from megatron_th.training.checkpoint_args import apply_checkpoint_args
from megatron_th.training.compile import check_compile, compile_layers
from megatron_th.training.metrics import MetricsLogger, apply_tf32, peak_tflops, tf32_enabled
from megatron_th.training.optimizer import MixedPrecisionOptimizer
from megatron_th.training.optimizers import FLAT_SHARDED
from megatron_th.training.resume import data_changes, load_state, save_state, tokenizer_files
from megatron_th.training.schedules import LRSchedule
from megatron_th.training.step import Stepper, unused_inputs
from megatron_th.training.tasks import make_task
from megatron_th.training.wandb_log import open_wandb, run_id


def write_trace(directory: str, groups, pipe) -> None:
    """rank{r}.json: this rank's ops of the last step; times are time.perf_counter() seconds
    (one monotonic clock per machine: ranks on one node compare directly)."""
    os.makedirs(directory, exist_ok=True)
    rec = {"rank": groups.rank, "pp_rank": groups.pp_rank, "tp_rank": groups.tp_rank, "dp_rank": groups.dp_rank,
           "pp": groups.pp, "chunks": pipe.v, "ops": pipe.trace}
    with open(os.path.join(directory, f"rank{groups.rank}.json"), "w") as f:
        json.dump(rec, f)


class TrainingAborted(RuntimeError):
    pass


def precision(cfg) -> tuple[str, torch.dtype]:
    if cfg.optim.bf16:
        return "bf16", torch.bfloat16
    if cfg.optim.fp16:
        return "fp16", torch.float16
    return "fp32", torch.float32


def setup_data(cfg, log=print, resumed: dict | None = None, task=None):
    """(tokenizer, tokenizer spec, {split: dataset}) as the task (training/tasks) builds them.
    ``resumed``: the ``--load`` checkpoint's state (iteration, consumed_samples), or None (also
    under --finetune): the train split holds what the remaining iterations take."""
    d = cfg.data
    task = task or make_task(cfg)
    tok_path = d.tokenizer_model or DEFAULT_TOKENIZER
    tokenizer = load_tokenizer(tok_path)
    group = host_sync.host_group(getattr(cfg.parallel, "distributed_timeout_minutes", None))  # rank 0 builds
    datasets = task.setup_data(cfg, tokenizer, model_vocab_size(cfg.model, tokenizer), log, resumed, group)
    return tokenizer, tok_path, datasets


def check_run_dirs(cfg) -> None:
    """Fail at start-up, not at the first save hours later: --save (and --log-dir) must be
    directories this process can create and write, --load a directory when it exists. Raises
    ConfigError naming the flag. Run on rank 0 (host_sync.run_on_rank0); --save on a filesystem
    every rank shares is checked at each save (CheckpointWriter.prepare_shared)."""
    t = cfg.train
    if t.load and os.path.exists(t.load) and not os.path.isdir(t.load):
        raise ConfigError(f"--load {t.load}: not a directory (give the checkpoint directory, the one holding "
                          f"'latest' and iter_*)")
    for flag, path in (("--save", t.save), ("--log-dir", t.log_dir)):
        if not path:
            continue
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def evaluate(cfg, model, stepper, dataset, tokenizer) -> dict | None:
    """The task's evaluation metrics over the first --eval-iters global batches of the split (the
    same every time), or with --full-validation over every sample of the split once; per source
    when the split blends several. None on ranks without the loss."""
    task, groups = stepper.task, stepper.groups
    model.eval()
    if cfg.train.full_validation:
        group = host_sync.host_group(cfg.parallel.distributed_timeout_minutes)
        loader = task.full_pass_loader(cfg, dataset, tokenizer, groups.dp_rank, groups.dp, group)
        batches, names = len(loader), loader.names
    else:
        loader = task.loader(cfg, dataset, tokenizer, 0, groups.dp_rank, groups.dp)
        batches = cfg.train.eval_iters
        names = dataset.names if isinstance(dataset, BlendedDataset) else None
    sources = [n.split(":")[0] for n in names] if names else ["all"]
    sums = None  # [source, k] on the device: summed over DP with one all-reduce
    rows = [] if getattr(task, "keep_rows", False) else None  # per-sample statistics, gathered over DP
    for _ in range(batches):
        ids = torch.tensor([max(i, 0) for i in loader.rank_sample_ids(loader.consumed_samples)])
        stats = stepper.eval(loader.next_global_batch())
        if stats is None:
            continue
        src = torch.tensor([loader.source(int(i)) for i in ids]) if names else torch.zeros(len(ids), dtype=torch.long)
        if sums is None:
            sums = torch.zeros(len(sources), stats.shape[1], dtype=torch.float64, device=stats.device)
        sums.index_add_(0, src.to(stats.device), stats.double())
        if rows is not None:
            rows.append(comm.all_gather(stats.double().contiguous(), groups.dp_group).cpu())
    model.train()
    if sums is None:
        return None
    if groups.dp > 1:  # every DP rank evaluated its slice of each batch
        comm.all_reduce(sums, groups.dp_group)
    per = sums.cpu().tolist()
    out = task.eval_metrics([sum(col) for col in zip(*per)])
    first = next(iter(out))  # the headline metric (lm_loss, or the task's loss)
    out["per_source"] = ({k: task.eval_metrics(r)[first] for k, r in sorted(zip(sources, per))}
                         if len(sources) > 1 else {})
    if rows is not None:
        out["rows"] = torch.cat(rows)
    return out


def make_grad_buffers(cfg, named, groups) -> GradBuffers:
    """Contiguous gradient buffers; fp32 under bf16 (as Megatron) or when asked."""
    p, o = cfg.parallel, cfg.optim
    grad_dtype = torch.float32 if (o.bf16 or p.accumulate_allreduce_grads_in_fp32) else named[0][1].dtype
    deferred = {TIED} if (groups.pp > 1 and not cfg.model.untie_embeddings_and_output_weights) else set()
    # Zero-1 by flat ranges (reduce-scatter) for elementwise optimizers; Adafactor and Muon own whole
    # parameters instead and need every gradient whole (all-reduce; parallel/zero_params.py)
    flat_zero1 = p.use_distributed_optimizer and o.optimizer in FLAT_SHARDED
    return GradBuffers(named, groups, grad_dtype, p.ddp_bucket_size, flat_zero1, p.overlap_grad_reduce, deferred)


def skip_train(cfg, model, stepper, datasets, tokenizer, metrics, state, groups, log) -> dict:
    """--skip-train: evaluate the valid split once (at the loaded iteration) and stop."""
    if datasets.get("valid") is None:
        raise ConfigError(f"--skip-train: --split {cfg.data.split} leaves no valid split to evaluate")
    ev = evaluate(cfg, model, stepper, datasets["valid"], tokenizer)
    if ev is not None:
        record = {k: v for k, v in ev.items() if k != "rows"}  # rows: the reference pass's per-pair tensor
        metrics.eval(dict(record, iteration=state["iteration"], consumed_samples=state["consumed_samples"]))
    metrics.close()
    return {"state": state, "losses": [], "grad_norms": [], "checkpoint": None, "model": model, "groups": groups,
            "eval": ev}


def pretrain(cfg, log=print, task=None) -> dict:
    """Runs training as configured; returns a summary (final state, last losses). ``task``: the
    objective (training/tasks), default the one ``cfg`` names (make_task)."""
    with contextlib.ExitStack() as run_scope:  # closes what the run opened (the prefetch thread) on any exit
        return _pretrain(cfg, log, task, run_scope)


def _pretrain(cfg, log, task, run_scope) -> dict:
    rank, world, device = init_distributed(cfg.parallel.distributed_backend, cfg.parallel.distributed_timeout_minutes)
    reader = apply_checkpoint_args(cfg, log if rank == 0 else (lambda *a, **k: None))
    finalize(cfg, world)
    task = task or make_task(cfg)
    p = cfg.parallel
    groups = ParallelGroups.build(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                                  timeout=datetime.timedelta(minutes=p.distributed_timeout_minutes))
    for grp, name in ((groups.tp_group, "tp"), (groups.dp_group, "dp"), (groups.pp_group, "pp"),
                      (groups.mp_group, "mp"), (groups.embd_group, "embd"), (groups.world_group, "world")):
        comm.GROUP_NAMES.setdefault(grp, name)
    is_logger = groups.tp_rank == 0 and groups.dp_rank == 0 and groups.is_last_stage
    if not is_logger:
        log = lambda *a, **k: None  # noqa: E731
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    prec, dtype = precision(cfg)
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.train
    tf32 = tf32_enabled(device.type, prec, o.tf32)
    apply_tf32(tf32, device.type)
    log(f"TF32 for fp32 matmuls: {'on' if tf32 else 'off'} ({prec} on {device.type}"
        f"{', --tf32' if o.tf32 else ', --no-tf32' if o.tf32 is False else ''}"
        f"{'; --tf32 ignored: TF32 exists only on CUDA' if o.tf32 and device.type != 'cuda' else ''})")
    host_sync.run_on_rank0(lambda: check_run_dirs(cfg), host_sync.host_group(p.distributed_timeout_minutes),
                           shared=(ConfigError,))
    # the checkpoint's state sizes the train split (read here, restored with the tensors below)
    resumed = reader.meta.get("state") if reader is not None and not t.finetune else None
    task.load_meta = reader.meta if reader is not None and t.finetune else None  # what --finetune starts from
    tokenizer, tok_path, datasets = setup_data(cfg, log, resumed, task)
    tok_files = tokenizer_files(tok_path) if t.save else None  # in memory: the source may be pruned
    vocab = model_vocab_size(m, tokenizer)
    core = build_chunks(cfg, vocab, groups, device, dtype)
    if t.compile:  # each transformer layer, in place (training/compile.py)
        check_compile(cfg, groups.tp)
        compile_layers(core.chunks)
    runners = core.chunks
    named = list(core.named_parameters())
    tied = not m.untie_embeddings_and_output_weights
    buffers = make_grad_buffers(cfg, named, groups)
    stepper = Stepper(runners, groups, cfg, dtype, device, trace=bool(t.pipeline_trace_dir), buffers=buffers,
                      finalize=lambda: finalize_grads(named, groups, tied), task=task)
    optimizer = MixedPrecisionOptimizer(named, o, buffers, groups, m, zero1=p.use_distributed_optimizer)
    optimizer.norm_weight = norm_weights(named, groups)
    optimizer.reduce_sq_norm = sq_norm_reducer(groups, zero1=p.use_distributed_optimizer)
    if p.overlap_param_gather:  # Zero-1 gathers waited in the next forward's pre-hooks (parallel/data_parallel.py)
        buffers.enable_param_gather_overlap(core.chunks)
    schedule = LRSchedule.from_config(o)
    state = {"iteration": 0, "consumed_samples": 0, "skipped_iters": 0}
    torch.manual_seed(stage_seed(t.seed, groups.pp_rank))
    # rank 0 resolved the checkpoint and read its metadata (apply_checkpoint_args); the others got
    # both by broadcast
    if t.load and reader is None:
        log(f"note: --load {t.load} holds no complete checkpoint yet; starting from scratch")
    elif reader is not None and t.finetune:
        load_state(reader, core, optimizer, groups, weights_only=True)
        log(f"--finetune: weights of {reader.path} (iteration {reader.meta.get('iteration')}); iteration, "
            f"optimizer and data start fresh")
    elif reader is not None:
        state.update(load_state(reader, core, optimizer, groups))
        log(f"resumed from {reader.path} at iteration {state['iteration']} "
            f"({state['consumed_samples']} samples consumed)")
        changed = data_changes(reader.meta.get("config", {}), cfg)
        if changed and not t.skip_train:  # --skip-train evaluates other data on purpose: nothing continues
            log(f"warning: {', '.join(changed)} since the checkpoint: continuing after its "
                f"{state['consumed_samples']} consumed samples in the new settings' sample order")
    wandb_id = run_id(t.wandb_project, state.get("wandb_run_id"), host_sync.host_group(p.distributed_timeout_minutes))
    if wandb_id:
        state["wandb_run_id"] = wandb_id  # in every checkpoint's metadata: a resumed run continues it
    with torch.device("meta"):
        nparams = sum(p_.numel() for p_ in GPTModel(cfg.model, vocab).parameters())
    log(f"model: {nparams / 1e6:.2f}M parameters, vocab {vocab} (padded "
        f"{core.padded_vocab_size}), {prec} on {device}, TP {groups.tp} PP {groups.pp} DP {groups.dp}")
    log_dir = t.log_dir or (os.path.join(t.save, "logs") if t.save else None)
    wb = open_wandb(t, cfg.to_dict(), wandb_id, t.save and os.path.join(t.save, "wandb"), log) if is_logger else None
    resumed_at = state["iteration"] if reader is not None and not t.finetune and not t.skip_train else None
    metrics = MetricsLogger(log_dir, is_logger, t.train_iters, t.tensorboard_dir, wandb=wb, extra=task.record,
                            resumed_at=resumed_at)
    if t.skip_train:
        return skip_train(cfg, core, stepper, datasets, tokenizer, metrics, state, groups, log)
    # the next global batch is built in the background while this one trains (data/prefetch.py)
    loader = run_scope.enter_context(Prefetcher(
        task.loader(cfg, datasets["train"], tokenizer, state["consumed_samples"], groups.dp_rank, groups.dp),
        batches=t.train_iters - state["iteration"], drop_keys=unused_inputs(groups), device=device))
    flops = flops_per_iteration(m, d.global_batch_size, m.seq_length, vocab) / world  # per device
    peak = peak_tflops(prec, device.type, t.peak_tflops, tf32) if is_logger else None  # only the logger uses it
    consecutive_skips, losses, gnorms, last_save, pending = 0, [], [], None, None
    window = {"loss": 0.0, "time": 0.0, "iters": 0, "gnorm": 0.0, "comm": 0.0}
    task_window = {}  # the task's metrics (train_metrics), summed over the log interval
    model = core
    model.train()
    while state["iteration"] < t.train_iters:
        t0 = time.perf_counter()
        bytes0 = comm.COUNTER.total()
        it = state["iteration"] + 1
        micro = loader.next_global_batch()
        ntok = stepper.num_tokens(micro)
        stats = stepper.train(micro, max(ntok, 1.0), optimizer.loss_scale).cpu().tolist()
        loss = stats[0] / max(ntok, 1.0)
        lr = schedule.lr_at(it)
        if math.isfinite(loss):
            stepped, gnorm = optimizer.step(lr)
        else:
            optimizer.zero_grad()
            stepped, gnorm = False, float("nan")
        state["iteration"], state["consumed_samples"] = it, loader.consumed_samples
        if stepped:
            consecutive_skips = 0
        else:
            state["skipped_iters"] += 1
            consecutive_skips += 1
            log(f"iter {it}: skipped the update (loss {loss:.4g}, grad norm {gnorm:.4g}, "
                f"loss scale now {optimizer.loss_scale:.4g})")
            if consecutive_skips >= o.max_skipped_iters:
                raise TrainingAborted(f"{consecutive_skips} consecutive iterations had a non-finite loss or "
                                      f"gradient (last loss {loss}); stopping. Lower --lr, use --bf16, or check the data.")
        losses.append(loss)
        gnorms.append(gnorm)
        dt = time.perf_counter() - t0
        window["loss"] += loss if math.isfinite(loss) else 0.0
        for k, v in (task.train_metrics(stats, max(ntok, 1.0)) if math.isfinite(loss) else {}).items():
            task_window[k] = task_window.get(k, 0.0) + v
        window["gnorm"] += gnorm if math.isfinite(gnorm) else 0.0
        window["time"] += dt
        window["iters"] += 1
        window["comm"] += comm.COUNTER.total() - bytes0
        if it % t.log_interval == 0 or it == t.train_iters:
            n = window["iters"]
            tps = n * d.global_batch_size * m.seq_length / window["time"]
            tflops = n * flops / window["time"] / 1e12
            rec = {"iteration": it, "consumed_samples": state["consumed_samples"],
                   "consumed_tokens": state["consumed_samples"] * m.seq_length, task.loss_name: window["loss"] / n,
                   **{k: v / n for k, v in task_window.items()},
                   "grad_norm": window["gnorm"] / n, "lr": lr, "loss_scale": optimizer.loss_scale,
                   "skipped_iters": state["skipped_iters"], "tokens_per_sec": tps, "tflops": tflops,
                   "mfu": tflops / peak.tflops if peak else None, "peak_tflops": peak and peak.tflops,
                   "peak_source": peak and peak.source, "step_time": window["time"] / n,
                   "comm_bytes_per_step": window["comm"] / n}
            metrics.train(rec, (t.train_iters - it) * window["time"] / n)
            window, task_window = dict.fromkeys(window, 0.0), {}
        if t.eval_interval and datasets.get("valid") is not None and (it % t.eval_interval == 0 or it == t.train_iters):
            ev = evaluate(cfg, model, stepper, datasets["valid"], tokenizer)
            if ev is not None:
                metrics.eval(dict(ev, iteration=it, consumed_samples=state["consumed_samples"]))
            if t.eval_ema:  # the same evaluation with the EMA weights swapped in, then swapped back
                with optimizer.ema_weights():
                    ev = evaluate(cfg, model, stepper, datasets["valid"], tokenizer)
                if ev is not None:
                    metrics.eval(dict(ev, split="valid_ema", iteration=it, consumed_samples=state["consumed_samples"]))
        if t.save and t.save_interval and it % t.save_interval == 0:
            if pending is not None:
                last_save = pending.finish()
                log(f"saved {last_save}")
            res = save_state(cfg, core, optimizer, dict(state), tok_files, t.keep_last, groups, t.async_save)
            if t.async_save:
                pending = res
            else:
                last_save = res
                log(f"saved {last_save}")
    optimizer.finish_param_sync()  # the last step's overlapped gathers: the weights are read from here on
    if t.pipeline_trace_dir and stepper.pipe is not None:
        write_trace(t.pipeline_trace_dir, groups, stepper.pipe)
    if pending is not None:
        last_save = pending.finish()
        log(f"saved {last_save}")
    if t.save and (last_save is None or not last_save.endswith(f"{state['iteration']:07d}")):
        last_save = save_state(cfg, core, optimizer, dict(state), tok_files, t.keep_last, groups)
        log(f"saved {last_save}")
    metrics.close()
    return {"state": state, "losses": losses, "grad_norms": gnorms, "checkpoint": last_save, "model": model,
            "groups": groups, "optimizer": optimizer, "buffers": buffers, "named_params": named}


def main(argv=None) -> int:
    """The command line: 0 on success, 2 for a configuration error, 1 for a missing file or an
    aborted run (one line ``error: ...`` on stderr). The process group is torn down on every path
    (groups.shutdown_distributed): destroyed after success and after these errors, which every
    rank meets alike; aborted (NCCL) when anything else escapes, so this rank need not wait for
    peers that may be stuck in a collective."""
    clean = False
    try:
        cfg, _ = parse_config(argv)
        pretrain(cfg)
        clean = True
    except (ConfigError, FileNotFoundError, TrainingAborted, CheckpointError) as e:
        clean = True
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    finally:
        shutdown_distributed(clean)
    return 0
