"""What a run takes from its ``--load`` checkpoint before the model is built: the tokenizer (when
``--tokenizer-model`` is not given) and, with ``--use-checkpoint-args``, the model architecture
(Megatron-LM's flag of the same name). Runs on every rank before ``finalize``."""
from __future__ import annotations



def apply_checkpoint_args(cfg, log=print):
    """Returns the ``--load`` checkpoint's reader (None without one), opened once for the whole
    run: rank 0 resolves and scans it and broadcasts its metadata (resume.open_checkpoint), so
    every rank decides the same way. Every rank must call this. Raises ConfigError when
    ``--finetune``, ``--use-checkpoint-args`` or ``--skip-train --load DIR`` finds no checkpoint to
    read (Megatron-LM warns and starts from a random model there; a typo in a path should not
    fine-tune or score one)."""
    from megatron_th.config import ARCH_FIELDS
    from megatron_th.parallel import host_sync
    from megatron_th.training.resume import check_resume, open_checkpoint, tokenizer_spec

    from megatron_th.config import ConfigError

    t, d = cfg.train, cfg.data
    reader = None if not t.load else open_checkpoint(
        t.load, group=host_sync.host_group(cfg.parallel.distributed_timeout_minutes), missing_ok=True)
    if reader is None:
        # these flags read a checkpoint: without one the run would train or score a random model
        needs = [f for f, on in (("--finetune", t.finetune), ("--use-checkpoint-args", t.use_checkpoint_args),
                                 ("--skip-train", t.skip_train and t.load)) if on]
        if needs:
            raise ConfigError(f"{needs[0]}: " + (f"no complete checkpoint in --load {t.load}" if t.load
                                                 else "needs --load CHECKPOINT_DIR"))
        return None
    check_resume(reader, cfg, log)  # a weights-only checkpoint needs --finetune; a switched --optimizer: a note
    if not d.tokenizer_model:
        d.tokenizer_model = tokenizer_spec(reader)
        if d.tokenizer_model:
            log(f"tokenizer: {d.tokenizer_model} (from --load)")
    if t.use_checkpoint_args:
        saved = reader.meta.get("config", {}).get("model", {})
        changed = []
        for k in ARCH_FIELDS:
            if k in saved and getattr(cfg.model, k) != saved[k]:
                changed.append(k)
                setattr(cfg.model, k, saved[k])
        log(f"--use-checkpoint-args: model architecture from {reader.path}"
            + (f" (replaced {', '.join(changed)})" if changed else ""))
    return reader
