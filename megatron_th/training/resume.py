"""Save and restore a run's full state through the checkpoint format (training/checkpoint.py).

State = model tensors (logical names), optimizer moments and fp32 masters (``optim.*``), RNG
states (``rng.<rank>.*``), and JSON metadata: iteration, consumed samples, skipped steps, loss
scaler, optimizer step, config, layout. Restoring it reproduces an uninterrupted run bitwise.
"""
from __future__ import annotations

import torch

from megatron_th.training.checkpoint import CheckpointReader, CheckpointWriter, find_checkpoint


def _full(t: torch.Tensor):
    return (t, tuple(t.shape), (0,) * t.dim())


def rng_tensors(rank: int) -> dict:
    out = {f"rng.{rank}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out[f"rng.{rank}.cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng(reader: CheckpointReader, rank: int) -> bool:
    name = f"rng.{rank}.cpu"
    if name not in reader.tensors:
        return False
    torch.set_rng_state(reader.read(name))
    if torch.cuda.is_available() and f"rng.{rank}.cuda" in reader.tensors:
        torch.cuda.set_rng_state(reader.read(f"rng.{rank}.cuda"))
    return True


def save_state(cfg, model, optimizer, state: dict, tokenizer_path: str | None, keep_last=None) -> str:
    """Single-process save (every tensor whole). Returns the checkpoint directory."""
    tensors = {n: _full(p) for n, p in model.named_parameters()}
    tensors.update({n: _full(t) for n, t in optimizer.state_tensors().items()})
    tensors.update({n: _full(t) for n, t in rng_tensors(0).items()})
    writer = CheckpointWriter(cfg.train.save, state["iteration"])
    writer.prepare()
    index = writer.write_shard(0, tensors)
    meta = {"state": state, "optimizer": optimizer.state_meta(), "config": cfg.to_dict(),
            "layout": {"tp": 1, "pp": 1, "dp": 1}, "tokenizer": "tokenizer.model" if tokenizer_path else None}
    files = {"tokenizer.model": tokenizer_path} if tokenizer_path else {}
    return writer.commit([index], meta, files, keep_last)


def open_checkpoint(load_dir: str, iteration: int | None = None) -> CheckpointReader:
    path = find_checkpoint(load_dir, iteration)
    if path is None:
        what = f"checkpoint of iteration {iteration}" if iteration is not None else "complete checkpoint"
        raise FileNotFoundError(f"--load {load_dir}: no {what} there (looked for latest and iter_*/metadata.json)")
    return CheckpointReader(path)


@torch.no_grad()
def load_model(reader: CheckpointReader, model) -> None:
    for name, p in model.named_parameters():
        if name not in reader.tensors:
            raise KeyError(f"{reader.path}: checkpoint has no tensor {name!r} for this model")
        if list(p.shape) != reader.shape(name):
            raise ValueError(f"{reader.path}: {name} has shape {reader.shape(name)}, the model wants {list(p.shape)}")
        p.copy_(reader.read(name))


def load_state(reader: CheckpointReader, model, optimizer, rank: int = 0) -> dict:
    """Restores model, optimizer (if saved) and RNG; returns the saved training state dict."""
    load_model(reader, model)
    if optimizer is not None and "optimizer" in reader.meta:
        names = [n for n in reader.tensors if n.startswith("optim.")]
        optimizer.load_state({n: reader.read(n) for n in names}, reader.meta["optimizer"])
    set_rng(reader, rank)
    return dict(reader.meta.get("state", {}))
