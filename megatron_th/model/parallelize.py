"""Turn a plain GPTModel (or pipeline stage) into its tensor-parallel shard, from outside.

The model files know no process groups; this function swaps modules for their TP versions
(torchtitan-style). Weights are the slices of the seeded logical tensors: taken from the plain
model when it holds weights, or drawn by name (model/init.py) when it was built on the meta
device, so no rank ever holds more than one full tensor at a time. With ``device="meta"`` nothing
is drawn (model/init.py ``skips_init``): the shard is a meta tensor of the local shape.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from megatron_th.model.gpt import scale_embeddings
from megatron_th.model.init import init_tensor, skips_init
from megatron_th.parallel import comm
from megatron_th.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                         VocabParallelHead, mark, shard)
from megatron_th.parallel.rng import TPRng


class ParallelEmbedding(nn.Module):
    """Vocab-parallel word embeddings + replicated learned positions (+ dropout on the output)."""

    def __init__(self, word: VocabParallelEmbedding, positions: nn.Embedding | None, dropout: float, group,
                 sequence_parallel: bool, sharded_rng, scale: float | None = None):
        super().__init__()
        self.word_embeddings, self.position_embeddings, self.scale = word, positions, scale
        self.dropout, self.group, self.sequence_parallel, self.sharded_rng = dropout, group, sequence_parallel, sharded_rng

    def forward(self, tokens, position_ids):
        x = scale_embeddings(self.word_embeddings(tokens), self.scale)  # reduced over TP (scattered under SP)
        if self.position_embeddings is not None:
            pos = self.position_embeddings(position_ids)
            x = x + (comm.scatter_to_sp(pos, self.group) if self.sequence_parallel else pos)
        with self.sharded_rng():
            return F.dropout(x, self.dropout, self.training)


def _full(name: str, p: torch.Tensor, cfg, seed: int) -> torch.Tensor:
    return init_tensor(name, tuple(p.shape), cfg, seed) if p.is_meta else p.detach().float()


def parallelize(model, groups, cfg, seed: int, sequence_parallel: bool = False, dtype=torch.float32,
                device="cpu", virtual_stage: int | None = None):
    """In place: TP-shard ``model`` over ``groups.tp_group``; returns it on ``device``/``dtype``.
    ``virtual_stage`` (default: the PP rank) seeds the chunk's sharded-dropout stream
    ``model.tp_rng`` (parallel/rng.py tp_seed), so stages and virtual chunks draw distinct masks."""
    tp, r, g = groups.tp, groups.tp_rank, groups.tp_group
    sp = sequence_parallel and tp > 1
    named = dict(model.named_parameters())

    skip = skips_init(device)  # on meta: shard the meta tensors themselves, draw nothing

    def take(name, tp_dim, chunks=1):
        full = named[name].detach() if skip else _full(name, named[name], cfg, seed)
        return shard(full, tp_dim, r, tp, chunks)

    rng = TPRng(seed, r, torch.device(device), groups.pp_rank if virtual_stage is None else virtual_stage)
    sharded_rng = rng.fork if tp > 1 else contextlib.nullcontext
    for lname, layer in model.layers.items():
        pre = f"layers.{lname}."
        attn, mlp = layer.self_attention, layer.mlp
        for mod, attr, kind, chunks in ((attn, "linear_qkv", "col", 1), (attn, "linear_proj", "row", 1),
                                        (mlp, "linear_fc1", "col", 2 if cfg.gated_linear_unit else 1), (mlp, "linear_fc2", "row", 1)):
            base = f"{pre}{'self_attention' if mod is attn else 'mlp'}.{attr}"
            has_bias = getattr(mod, attr).bias is not None
            if kind == "col":
                new = ColumnParallelLinear(take(base + ".weight", 0, chunks),
                                           take(base + ".bias", 0, chunks) if has_bias else None, g, sp, chunks)
            else:
                new = RowParallelLinear(take(base + ".weight", 1),
                                        take(base + ".bias", None) if has_bias else None, g, sp)
            setattr(mod, attr, new)
        attn.sharded_rng = sharded_rng
        if sp:
            layer.sharded_rng = sharded_rng
    vp = model.padded_vocab_size
    if vp % tp:
        raise ValueError(f"padded vocab {vp} is not divisible by --tensor-model-parallel-size {tp}; "
                         f"choose --make-vocab-size-divisible-by as a multiple of {tp}")
    start = r * (vp // tp)
    if hasattr(model, "embedding"):
        emb = model.embedding
        word = VocabParallelEmbedding(take("embedding.word_embeddings.weight", 0), g, start, sp)
        pos = None
        if emb.position_embeddings is not None:
            pos = nn.Embedding(*emb.position_embeddings.weight.shape)
            # replicated; under SP its gradient is all-gathered by scatter_to_sp, so no TP all-reduce
            pos.weight = mark(nn.Parameter(take("embedding.position_embeddings.weight", None)), None)
        model.embedding = ParallelEmbedding(word, pos, emb.dropout, g, sp, sharded_rng if sp else contextlib.nullcontext,
                                            emb.scale)
    if model.post_process:
        if not model.tied:
            model.output_layer.weight = mark(nn.Parameter(take("output_layer.weight", 0)), 0)
        model.lm_head = VocabParallelHead(g, start, model.vocab_size, sp)
    # everything not replaced (norms, position embeddings) is replicated over TP. Its gradient is
    # partial on each TP rank (summed by parallel/grads.py finalize_grads) under SP, and always for
    # QK-norm weights: each rank normalises only its own heads with them.
    for name, p in model.named_parameters():
        if not hasattr(p, "tp_dim"):
            if p.is_meta and not skip:
                with torch.no_grad():
                    new = nn.Parameter(init_tensor(name, tuple(p.shape), cfg, seed))
                _replace_param(model, name, new)
                p = new
            per_head = tp > 1 and (".q_layernorm." in name or ".k_layernorm." in name)
            mark(p, None, sequence_parallel=sp or per_head)
    model.tp_rng = rng
    return model.to(device=device, dtype=dtype)


def _replace_param(model, name, new):
    mod_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(mod_name), leaf, new)
