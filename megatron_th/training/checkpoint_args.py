"""What a run takes from its ``--load`` checkpoint before the model is built: the tokenizer (when
``--tokenizer-model`` is not given) and, with ``--use-checkpoint-args``, the model architecture
(Megatron-LM's flag of the same name). Runs on every rank before ``finalize``."""
from __future__ import annotations



def apply_checkpoint_args(cfg, log=print):
    """Returns the ``--load`` checkpoint's reader (None without one), opened once for the whole
    run: rank 0 resolves and scans it and broadcasts its metadata (resume.open_checkpoint), so
    every rank decides the same way. Every rank must call this."""
    from megatron_th.config import ARCH_FIELDS
    from megatron_th.parallel import host_sync
    from megatron_th.training.resume import check_resume, open_checkpoint, tokenizer_spec

    t, d = cfg.train, cfg.data
    if not t.load:
        return None
    reader = open_checkpoint(t.load, group=host_sync.host_group(cfg.parallel.distributed_timeout_minutes),
                             missing_ok=True)
    if reader is None:
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
