"""Save and restore a run's full state through the checkpoint format (training/checkpoint.py).

State = model tensors (logical names), optimizer moments and fp32 masters (``optim.*``), RNG
states (``rng.<rank>.*``), and JSON metadata: iteration, consumed samples, skipped steps, loss
scaler, optimizer step, config, layout. Each rank writes the slices it owns (TP shards; replicated
tensors once), and each rank reads back exactly the regions its own layout needs, so a checkpoint
saved at one TP size loads at another. At the same layout a resumed run is bitwise identical.
"""
from __future__ import annotations

import os
import threading

import torch
import torch.distributed as dist

from megatron_th.parallel.layers import shard_offsets
from megatron_th.parallel import host_sync
from megatron_th.training.checkpoint import CheckpointReader, CheckpointWriter, open_shared


class _Single:
    """The layout of a single process (no groups)."""
    tp, pp, dp, tp_rank, pp_rank, dp_rank, rank = 1, 1, 1, 0, 0, 0, 0
    world_group = None


def _layout(p, groups):
    """(logical shape, [(offset, shape)] regions, tp_dim, chunks) of parameter p on this rank."""
    tp_dim, chunks = getattr(p, "tp_dim", None), getattr(p, "tp_chunks", 1)
    full = list(p.shape)
    if tp_dim is not None:
        full[tp_dim] *= groups.tp
    return full, shard_offsets(full, tp_dim, groups.tp_rank, groups.tp, chunks), tp_dim, chunks


def _pieces(name, t, p, groups):
    full, regions, tp_dim, chunks = _layout(p, groups)
    if tp_dim is None and groups.tp_rank != 0:
        return []  # replicated: TP rank 0 writes it
    parts = t.chunk(chunks, dim=tp_dim) if tp_dim is not None and chunks > 1 else [t]
    return [(name, part, full, off) for part, (off, _) in zip(parts, regions)]


def _tp_rngs(model) -> list:
    """Every chunk's sharded-dropout stream (ModelChunks.tp_rngs, or one module's tp_rng)."""
    if model is None:
        return []
    if hasattr(model, "tp_rngs"):
        return list(model.tp_rngs)
    return [model.tp_rng] if getattr(model, "tp_rng", None) is not None else []


def _cuda_device(model):
    """The CUDA device the model lives on, or None (CPU/gloo runs never touch CUDA's RNG)."""
    p = next(iter(model.parameters()), None) if model is not None else None
    return p.device if p is not None and p.device.type == "cuda" else None


def rng_tensors(rank: int, model=None) -> list:
    """This rank's RNG states as checkpoint pieces: ``rng.<rank>.cpu``, ``rng.<rank>.cuda`` (when
    the model is on a GPU) and ``rng.<rank>.tp.<chunk>`` for each model chunk's sharded-dropout
    stream (uint8 tensors of get_rng_state)."""
    out = [(f"rng.{rank}.cpu", torch.get_rng_state())]
    dev = _cuda_device(model)
    if dev is not None:
        out.append((f"rng.{rank}.cuda", torch.cuda.get_rng_state(dev)))
    for c, rng in enumerate(_tp_rngs(model)):
        out.append((f"rng.{rank}.tp.{c}", rng.state))
    return [(n, t, list(t.shape), (0,) * t.dim()) for n, t in out]


class PendingSave:
    """A checkpoint whose shard files are being written; ``finish()`` (every rank, at the same
    point of training) waits for them and commits. Until then ``latest`` still names the previous
    checkpoint, so a crash in between loses nothing that was committed."""

    def __init__(self, writer, groups, distributed, meta, files, keep_last):
        self.writer, self.groups, self.distributed = writer, groups, distributed
        self.meta, self.files, self.keep_last = meta, files, keep_last
        self.result, self.error, self.thread = None, None, None

    def start(self, write) -> "PendingSave":
        self.thread = threading.Thread(target=self._run, args=(write,), daemon=True)
        self.thread.start()
        return self

    def _run(self, write):
        try:
            self.result = write()
        except BaseException as e:  # re-raised on the training thread by finish()
            self.error = e

    def finish(self) -> str:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        index = self.result
        indices = [index]
        if self.distributed:
            indices = [None] * dist.get_world_size()
            dist.all_gather_object(indices, index)
        path = self.writer.final
        if self.groups.rank == 0:
            path = self.writer.commit(indices, self.meta, self.files, self.keep_last)
        if self.distributed:
            dist.barrier()
        return path


def tokenizer_files(spec) -> tuple[str | None, dict]:
    """(name inside the checkpoint, {name: contents}) for a tokenizer spec, read into memory now: a
    sentencepiece file is stored as ``tokenizer.model`` (bytes), an HF tokenizer directory
    (``hf:<dir>``) as ``tokenizer/`` ({file: bytes}). Reading once at startup lets every later
    checkpoint store the tokenizer even when its source was a checkpoint since pruned. A tuple
    already made by this function passes through."""
    if isinstance(spec, tuple):
        return spec
    if not spec:
        return None, {}
    spec = str(spec)
    if spec.startswith("hf:"):
        src = spec[3:]
        files = {}
        for f in sorted(os.listdir(src)):
            if os.path.isfile(os.path.join(src, f)):
                with open(os.path.join(src, f), "rb") as fh:
                    files[f] = fh.read()
        return "tokenizer", {"tokenizer": files}
    with open(spec, "rb") as fh:
        return "tokenizer.model", {"tokenizer.model": fh.read()}


def tokenizer_spec(reader) -> str | None:
    """The tokenizer stored in a checkpoint, as a ``load_tokenizer`` spec (None if it has none)."""
    name = reader.meta.get("tokenizer")
    if not name:
        return None
    path = os.path.join(reader.path, name)
    if os.path.isdir(path):
        return "hf:" + path
    return path if os.path.isfile(path) else None


def save_weights_only(save_dir: str, iteration: int, named_tensors, config: dict, tokenizer: str | None,
                      extra_meta: dict | None = None, shard_bytes: int = 2 ** 30) -> str:
    """One process writes a checkpoint holding only model weights (whole logical tensors), e.g. an
    imported model. ``named_tensors`` is consumed lazily and written in shards of about
    ``shard_bytes``, so memory stays near one shard. ``--load`` starts from it at iteration
    ``iteration`` with a fresh optimizer (fp32 masters taken from these weights)."""
    writer = CheckpointWriter(save_dir, iteration)
    writer.prepare()
    indices, pieces, size = [], [], 0
    for name, t in named_tensors:
        pieces.append((name, t, list(t.shape), (0,) * t.dim()))
        size += t.numel() * t.element_size()
        if size >= shard_bytes:
            indices.append(writer.write_shard(len(indices), pieces))
            pieces, size = [], 0
    if pieces or not indices:
        indices.append(writer.write_shard(len(indices), pieces))
    tok_name, files = tokenizer_files(tokenizer)
    meta = {"state": {"iteration": iteration, "consumed_samples": 0, "skipped_iters": 0}, "config": config,
            "layout": {"tp": 1, "pp": 1, "dp": 1}, "tokenizer": tok_name, **(extra_meta or {})}
    return writer.commit(indices, meta, files)


def save_state(cfg, model, optimizer, state: dict, tokenizer, keep_last=None, groups=None,
               async_save: bool = False):
    """Every rank calls this. Synchronous: returns the checkpoint directory. With ``async_save``
    the tensors are copied to CPU now, written by a background thread while training goes on, and
    a PendingSave is returned: call its finish() on every rank before the next save or the end.
    ``tokenizer``: a spec (path or hf:<dir>), a ``tokenizer_files`` result, or None."""
    groups = groups or _Single()
    distributed = dist.is_initialized() and groups.world_group is not None
    writer = CheckpointWriter(cfg.train.save, state["iteration"])
    # rank 0 makes iter_N.tmp; every rank must see it (one ConfigError on every rank if not)
    writer.prepare_shared(host_sync.host_group(cfg.parallel.distributed_timeout_minutes) if distributed else None)
    pieces, private = [], []  # private[i]: piece i is already this save's own host copy
    params = dict(model.named_parameters())
    opt_state = optimizer.state_tensors()  # collective under Zero-1: every rank takes part, DP rank 0 gets them
    gathered = optimizer.buffers is not None  # Zero-1 hands the writer fresh host copies (parallel/zero.py)
    if groups.dp_rank == 0:
        for n, p in params.items():
            pieces += _pieces(n, p, p, groups)
        private += [False] * (len(pieces) - len(private))
    if groups.dp_rank == 0 or getattr(optimizer, "state_on_every_dp_rank", False):  # Zero-1 by whole params
        for key, t, where in opt_state:  # where: the parameter's name, or a Layout (optimizers/__init__.py)
            pieces += _pieces(key, t, params[where] if isinstance(where, str) else where, groups)
        private += [gathered] * (len(pieces) - len(private))
    pieces += rng_tensors(groups.rank, model)
    private += [False] * (len(pieces) - len(private))
    if async_save:  # a private CPU copy: training keeps updating the originals in place
        pieces = [piece if own else (piece[0], piece[1].detach().to("cpu", copy=True), *piece[2:])
                  for piece, own in zip(pieces, private)]
    tok_name, files = tokenizer_files(tokenizer)
    meta = {"state": state, "optimizer": optimizer.state_meta(), "config": cfg.to_dict(),
            "layout": {"tp": groups.tp, "pp": groups.pp, "dp": groups.dp}, "tokenizer": tok_name}
    pending = PendingSave(writer, groups, distributed, meta, files, keep_last)
    if async_save:
        return pending.start(lambda: writer.write_shard(groups.rank, pieces))
    pending.result = writer.write_shard(groups.rank, pieces)
    return pending.finish()


def open_checkpoint(load_dir: str, iteration: int | None = None, group="auto",
                    missing_ok: bool = False) -> CheckpointReader | None:
    """The checkpoint to load from ``load_dir`` (``iteration``, else ``latest``, else the newest).

    ``group``: "auto" = host_sync.host_group() when torch.distributed is initialized with several
    ranks (then every rank must call this), else this process alone (tools); or a group / None.
    Rank 0 resolves, scans and reads the metadata and broadcasts them (training/checkpoint.py
    ``open_shared``). Returns None if there is none and ``missing_ok``; else FileNotFoundError
    naming --load."""
    if isinstance(group, str):  # "auto"
        group = host_sync.host_group()
    return open_shared(load_dir, iteration, group, missing_ok)


def _read_local(reader, name, p, groups) -> torch.Tensor:
    if name not in reader.tensors:
        raise KeyError(f"{reader.path}: checkpoint has no tensor {name!r} for this model")
    full, regions, tp_dim, _ = _layout(p, groups)
    if reader.shape(name) != full:
        raise ValueError(f"{reader.path}: {name} has shape {reader.shape(name)}, the model wants {full}")
    parts = [reader.read(name, off, shp) for off, shp in regions]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=tp_dim)


def _eps(dtype) -> float:
    return torch.finfo(getattr(torch, dtype) if isinstance(dtype, str) else dtype).eps


def weight_key(reader: CheckpointReader, name: str, dtype: torch.dtype) -> str:
    """The checkpoint tensor to take parameter ``name`` from when the model holds it in ``dtype``:
    the fp32 master ``optim.master.<name>`` when the checkpoint has one and ``dtype`` is more
    precise than the stored weight (a bf16 run resumed in fp32, or in fp16, whose mantissa is
    longer than bf16's), else the weight itself. At the saved precision both give the same bits
    (the 16-bit weight is the rounded master), so the smaller tensor is read."""
    master = f"optim.master.{name}"
    if master in reader.tensors and name in reader.tensors and _eps(dtype) < _eps(reader.tensors[name]["dtype"]):
        return master
    return name


@torch.no_grad()
def load_model(reader: CheckpointReader, model, groups=None) -> None:
    """Copies every parameter of ``model`` from the checkpoint, at this rank's layout, from the
    most precise copy the checkpoint holds for the parameter's dtype (``weight_key``)."""
    groups = groups or _Single()
    for name, p in model.named_parameters():
        p.copy_(_read_local(reader, weight_key(reader, name, p.dtype), p, groups))


# settings the sample order is a function of (docs/data.md): (flag, config section, field)
DATA_SETTINGS = (("--data-path", "data", "data_path"), ("--split", "data", "split"),
                 ("--seq-length", "model", "seq_length"), ("--seed", "train", "seed"))


def data_changes(saved_config: dict, cfg) -> list[str]:
    """``["--seq-length 32 -> 16", ...]``: the settings that fix the sample order (blend weights
    and data paths, split, sequence length, seed) that differ between the checkpoint's config
    (``reader.meta["config"]``) and ``cfg``. Megatron allows the change; the run continues from
    ``consumed_samples`` in the new order, so the caller warns. Settings absent from the saved
    config are not compared."""
    out = []
    for flag, sec, field in DATA_SETTINGS:
        saved = (saved_config or {}).get(sec, {})
        if field not in saved:
            continue
        old, new = saved[field], getattr(getattr(cfg, sec), field)
        if isinstance(old, list) or isinstance(new, list):
            old, new = [str(x) for x in old or []], [str(x) for x in new or []]
            if old != new:
                out.append(f"{flag} {' '.join(old) or '(embedded corpus)'} -> {' '.join(new) or '(embedded corpus)'}")
        elif old != new:
            out.append(f"{flag} {old} -> {new}")
    return out


def check_resume(reader: CheckpointReader | None, cfg, log=print) -> None:
    """What ``--load`` (without ``--finetune`` and ``--skip-train``) takes from ``reader`` that the
    user should know before training starts; every rank calls it, ``log`` is rank 0's.

    - A weights-only checkpoint (no ``optimizer`` metadata: tools/average_checkpoints.py,
      tools/convert_from_hf.py) saved at an iteration > 0 has no optimizer state and no data
      position (``consumed_samples`` 0): resuming would restart the data at sample 0 at that
      iteration. ConfigError telling to add --finetune. (An imported model is at iteration 0,
      where resuming is the same as --finetune, and loads as before.)
    - A checkpoint saved with another ``--optimizer``: its optimizer state is not loaded
      (MixedPrecisionOptimizer.load_state); one ``note:`` line names what is dropped."""
    from megatron_th.config import ConfigError

    t = cfg.train
    if reader is None or t.finetune or t.skip_train:
        return
    meta = reader.meta
    iteration = int((meta.get("state") or {}).get("iteration", meta.get("iteration", 0)) or 0)
    if "optimizer" not in meta:
        if iteration > 0:
            avg = meta.get("averaged")
            what = (f"the average of iterations {', '.join(map(str, avg.get('iterations', [])))} written by "
                    f"tools/average_checkpoints.py" if isinstance(avg, dict) else "a weights-only checkpoint")
            raise ConfigError(f"--load {t.load}: {reader.path} is {what}, with no optimizer state and no data "
                              f"position to resume at iteration {iteration}; add --finetune to train from its "
                              f"weights (iteration, optimizer and data start fresh)")
        return
    saved = (meta.get("optimizer") or {}).get("optimizer", "adam")  # checkpoints before --optimizer: AdamW
    if saved != cfg.optim.optimizer:
        kinds = sorted({n.split(".")[1] for n in reader.tensors
                        if n.startswith("optim.") and n.split(".")[1] not in ("master", "ema")})
        held = ", ".join(f"optim.{k}.*" for k in kinds) or "none saved"
        log(f"note: --optimizer {cfg.optim.optimizer}: the checkpoint's {saved} state ({held}) is dropped; "
            f"{cfg.optim.optimizer} starts with fresh state (weights, fp32 masters and EMA load as saved)")


def load_state(reader: CheckpointReader, model, optimizer, groups=None, weights_only: bool = False) -> dict:
    """Restores model, optimizer (if saved) and, at the same layout, RNG; returns the saved state.

    Across precisions the most precise weights win: parameters and fp32 masters come from the
    checkpoint's masters when it has them (a 16-bit run), else from its weights (an fp32 run, or
    weights only); the loss scaler is restored only between fp16 runs (a fresh one otherwise).
    ``weights_only`` (--finetune): only the weights (and fp32 masters from the most precise of
    them); the optimizer's moments, step and scaler, the RNG and the state start fresh ({})."""
    groups = groups or _Single()
    load_model(reader, model, groups)
    if optimizer is not None:
        params = dict(model.named_parameters())
        tensors = {}
        for key, where in optimizer.state_keys():  # where: the parameter's name, or a Layout
            if weights_only and not key.startswith("optim.master."):
                continue
            if key in reader.tensors:
                tensors[key] = _read_local(reader, key, params[where] if isinstance(where, str) else where, groups)
            elif key.startswith("optim.master."):  # weights-only checkpoint: masters from the saved
                tensors[key] = _read_local(reader, where, params[where], groups)  # weights, full precision
        fresh = {"step": 0, "loss_scaler": optimizer.scaler.state_dict()}
        meta = fresh if weights_only else reader.meta.get("optimizer", fresh)
        saved_fp16 = reader.meta.get("config", {}).get("optim", {}).get("fp16")
        if saved_fp16 is not None and bool(saved_fp16) != optimizer.scaler.dynamic:
            # fp16 <-> bf16/fp32: a dynamic loss scale means nothing to the other precision
            meta = dict(meta, loss_scaler=fresh["loss_scaler"])
        optimizer.load_state(tensors, meta)
    if weights_only:
        return {}
    same_layout = reader.meta.get("layout") == {"tp": groups.tp, "pp": groups.pp, "dp": groups.dp}
    r = groups.rank
    if same_layout and f"rng.{r}.cpu" in reader.tensors:
        torch.set_rng_state(reader.read(f"rng.{r}.cpu"))
        dev = _cuda_device(model)
        if dev is not None and f"rng.{r}.cuda" in reader.tensors:
            torch.cuda.set_rng_state(reader.read(f"rng.{r}.cuda"), dev)
        for c, rng in enumerate(_tp_rngs(model)):
            key = f"rng.{r}.tp.{c}"
            if key not in reader.tensors and c == 0:
                key = f"rng.{r}.tp"  # checkpoints before per-chunk streams held the first chunk's only
            if key in reader.tensors:
                rng.state = reader.read(key)
    return dict(reader.meta.get("state", {}))
