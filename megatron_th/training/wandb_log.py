"""Weights & Biases logging with Megatron-LM's flags (--wandb-project, --wandb-exp-name,
--wandb-save-dir, --wandb-entity): the metrics.jsonl scalars and the resolved config, from the
one logging rank, one W&B run per training job across resumes.

``wandb`` is an optional extra (``pip install megatron_th[wandb]``) imported only when
--wandb-project asks for it; missing, or failing to start, it costs one ``note:`` line and
training goes on. WANDB_MODE=offline (W&B's own variable) writes the run under --wandb-save-dir
for a later ``wandb sync``.

Names follow Megatron-LM (megatron/training/training.py ``training_log`` and
``evaluate_and_print_results``) where it logs the same quantity: "lm loss", "learning-rate",
"grad-norm", "loss-scale", "throughput" (TFLOP/s per device), "iteration-time" (s),
"samples vs steps", "lm loss validation", "lm loss validation-<name>"; the rest in the same
style ("tokens-per-sec", "mfu", "consumed-tokens", "skipped-iterations", "comm-bytes-per-step").
Unlike Megatron (``wandb.log(..., step=iteration)``) every point carries "iteration" and W&B plots
against it (``define_metric("*", step_metric="iteration")``): W&B steps must only grow, so a run
resumed from a checkpoint older than its last logged step would otherwise have its repeated
iterations dropped.
"""
from __future__ import annotations

import os
import secrets
import string

# metrics.jsonl key -> W&B key of a training record; other numeric keys keep their own name
TRAIN_NAMES = {
    "lm_loss": "lm loss",
    "lr": "learning-rate",
    "grad_norm": "grad-norm",
    "loss_scale": "loss-scale",
    "skipped_iters": "skipped-iterations",
    "tokens_per_sec": "tokens-per-sec",
    "tflops": "throughput",
    "mfu": "mfu",
    "consumed_samples": "samples vs steps",
    "consumed_tokens": "consumed-tokens",
    "step_time": "iteration-time",
    "comm_bytes_per_step": "comm-bytes-per-step",
}
STEP = "iteration"  # the x axis of every W&B chart
NOT_LOGGED = ("iteration", "split", "peak_tflops")  # the axis itself; a constant (MFU's denominator)
_FLAGS = ("wandb_exp_name", "wandb_save_dir", "wandb_entity")


def wandb_metrics(record: dict) -> dict:
    """{W&B name: number} for one metrics.jsonl record (see the module docstring for names).

    A record without "split" is a training record; with one ("valid", "test") an evaluation:
    "lm loss validation" (or "lm loss <split>"), its "... ppl", and per source
    "lm loss validation-<source>". Non-numeric values (peak_source) are left out; "iteration"
    is always there. A pure function."""
    out = {STEP: record["iteration"]}
    split = record.get("split")
    if split is None:
        for k, v in record.items():
            if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[TRAIN_NAMES.get(k, k)] = v
        return out
    tag = "validation" if split == "valid" else split
    out[f"lm loss {tag}"] = record["lm_loss"]
    if "ppl" in record:
        out[f"lm loss {tag} ppl"] = record["ppl"]
    for src, v in record.get("per_source", {}).items():
        out[f"lm loss {tag}-{src}"] = v
    return out


def new_run_id() -> str:
    """A fresh W&B run id: 8 characters of [a-z0-9], as wandb's own generate_id. From the OS's
    random source (``secrets``), so it never touches the training RNG streams."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def run_id(project: str | None, saved: str | None, group=None) -> str | None:
    """This training job's W&B run id. ``saved`` (the --load checkpoint's ``state["wandb_run_id"]``,
    the same on every rank) wins, so a resumed run continues its W&B run; else, with --wandb-project,
    a new id made by global rank 0 and broadcast over ``group`` (host_sync.host_group(); None for
    one process) so that every rank stores the same id in its checkpoints; else None. Every rank
    calls this at the same point (a collective when an id is made)."""
    if saved or not project:
        return saved
    import torch.distributed as dist

    from megatron_th.parallel import host_sync

    mine = new_run_id() if group is None or dist.get_rank() == 0 else None
    return host_sync.broadcast_json(mine, group)


class WandbWriter:
    """An open W&B run: ``log(record)`` takes metrics.jsonl records, ``finish()`` closes the run."""

    def __init__(self, run):
        self.run = run
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)

    def log(self, record: dict) -> None:
        self.run.log(wandb_metrics(record))

    def finish(self) -> None:
        self.run.finish()


def open_wandb(train, config: dict, run_id: str | None, save_dir_default: str | None = None,
               log=print) -> WandbWriter | None:
    """Start or continue the W&B run asked for by ``train`` (TrainConfig: wandb_project,
    wandb_exp_name, wandb_save_dir, wandb_entity) with ``config`` (Config.to_dict(), the resolved
    config) as its config; call it on the logging rank only. ``run_id`` (from run_id()) goes to
    wandb.init with ``resume="allow"``: W&B makes the run if it does not exist yet, else appends
    to it. Local files go to --wandb-save-dir, else ``save_dir_default`` (<--save>/wandb, as
    Megatron-LM), else W&B's default (./wandb); the directory is created.

    Returns None, after one ``note:`` line through ``log``, when --wandb-project is not given but
    another --wandb-* flag is, when wandb is not installed, or when wandb.init fails (no API key,
    no network in online mode, ...): W&B is a view of the run, never a reason to stop it."""
    if not train.wandb_project:
        given = [f"--{f.replace('_', '-')}" for f in _FLAGS if getattr(train, f)]
        if given:
            log(f"note: {', '.join(given)} given without --wandb-project; W&B logging is off")
        return None
    try:
        import wandb
    except ImportError:
        log("note: wandb is not installed (pip install 'megatron_th[wandb]'); --wandb-project ignored, "
            "metrics.jsonl still written")
        return None
    save_dir = train.wandb_save_dir or save_dir_default
    kwargs = {"project": train.wandb_project, "name": train.wandb_exp_name, "entity": train.wandb_entity,
              "config": config, "id": run_id, "resume": "allow" if run_id else None}
    try:
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
            kwargs["dir"] = save_dir
        run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
        writer = WandbWriter(run)
    except Exception as e:  # wandb raises UsageError, CommError, TimeoutError, OSError, ...
        log(f"note: W&B run could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"--wandb-project ignored, metrics.jsonl still written")
        return None
    return writer
