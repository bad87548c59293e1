"""Which layers this rank holds, and the model chunks built for them.

Layers split evenly over ``p * v`` virtual stages (v = chunks per rank under interleaving); chunk
c on PP rank r is virtual stage ``c*p + r`` and holds layer block ``c*p + r``. The embedding lives
on the first virtual stage, final norm + head + loss on the last. Optional explicit layer counts
for the first and last stage (``--decoder-first-pipeline-num-layers`` /
``--decoder-last-pipeline-num-layers``) let a heavy embedding or head stage carry fewer layers.
"""
from __future__ import annotations

import itertools

import torch

from megatron_th.config import ConfigError
from megatron_th.model.gpt import GPTModel, build_model
from megatron_th.model.init import skips_init
from megatron_th.model.parallelize import parallelize


def layer_ranges(num_layers: int, p: int, v: int = 1, first: int | None = None, last: int | None = None) -> list:
    """[(lo, hi)] for each virtual stage 0 .. p*v-1."""
    nvs = p * v
    if first is None and last is None:
        if num_layers % nvs:
            what = "pipeline stages" if v == 1 else f"virtual pipeline stages ({p} x {v})"
            raise ConfigError(f"--num-layers {num_layers} is not divisible by the {nvs} {what}")
        counts = [num_layers // nvs] * nvs
    else:
        if v > 1:
            raise ConfigError("explicit first/last stage layer counts do not combine with interleaving")
        f = first if first is not None else None
        l_ = last if last is not None else None
        middle = p - (f is not None) - (l_ is not None)
        rest = num_layers - (f or 0) - (l_ or 0)
        if rest < 0 or (middle and rest % middle) or (not middle and rest):
            raise ConfigError(f"--num-layers {num_layers} cannot be split as first {first}, last {last}, and "
                              f"equal middle stages over {p} stages")
        even = rest // middle if middle else 0
        counts = [even] * p
        if f is not None:
            counts[0] = f
        if l_ is not None:
            counts[-1] = l_
    bounds = [0] + list(itertools.accumulate(counts))
    return [(bounds[i], bounds[i + 1]) for i in range(nvs)]


class ModelChunks:
    """This rank's model chunks, seen as one model with logical parameter names."""

    def __init__(self, chunks: list):
        self.chunks = chunks

    def named_parameters(self):
        for ch in self.chunks:
            yield from ch.named_parameters()

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def train(self, mode: bool = True):
        for ch in self.chunks:
            ch.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def tp_rngs(self) -> list:
        """Each chunk's sharded-dropout stream (parallel/rng.py TPRng), in chunk order; [] without
        TP. Chunk c's stream is seeded for virtual stage c * p + pp_rank: all are checkpointed."""
        return [ch.tp_rng for ch in self.chunks if getattr(ch, "tp_rng", None) is not None]

    @property
    def tp_rng(self):
        """The first chunk's stream (None without TP); ``tp_rngs`` holds them all."""
        return getattr(self.chunks[0], "tp_rng", None)

    @property
    def padded_vocab_size(self):
        return self.chunks[0].padded_vocab_size


def build_chunks(cfg, vocab_size: int, groups, device, dtype) -> ModelChunks:
    """This rank's model chunks (one per virtual stage it holds), TP-sharded when ``groups.tp`` >
    1, with the seeded initial weights (model/init.py) in ``dtype`` on ``device``. On the ``meta``
    device no weights are drawn (model/init.py ``skips_init``): the chunks have their real local
    shapes and dtypes but no storage, for sizing a rank of any model without its memory.
    Raises ConfigError when the layers do not split over the (virtual) stages."""
    m, par = cfg.model, cfg.parallel
    p, r = groups.pp, groups.pp_rank
    per = par.num_layers_per_virtual_pipeline_stage
    v = (m.num_layers // p) // per if per else 1
    ranges = layer_ranges(m.num_layers, p, v, par.decoder_first_pipeline_num_layers,
                          par.decoder_last_pipeline_num_layers)
    chunks = []
    for c in range(v):
        vs = c * p + r
        stage = dict(layer_range=ranges[vs], pre_process=vs == 0, post_process=vs == p * v - 1)
        if groups.tp == 1 and skips_init(device):  # shapes only: no weights drawn, no storage
            with torch.device("meta"):
                chunks.append(GPTModel(m, vocab_size, **stage).to(dtype=dtype))
        elif groups.tp == 1:
            chunks.append(build_model(m, vocab_size, cfg.train.seed, device=device, dtype=dtype, **stage))
        else:
            with torch.device("meta"):
                meta = GPTModel(m, vocab_size, **stage)
            chunks.append(parallelize(meta, groups, m, cfg.train.seed, par.sequence_parallel, dtype, device,
                                      virtual_stage=vs))
    return ModelChunks(chunks)
