"""GPTModel: embedding -> transformer layers -> final norm -> output head -> per-token loss.

A pipeline stage is the same class holding a slice of the layers (``layer_range``), the embedding
only on the first stage (``pre_process``) and the head only on the last (``post_process``). Layers
keep their global index in parameter names (``layers.5.mlp...``) so checkpoints are logical. With
tied embeddings, a last stage that is not also the first holds its own copy of
``embedding.word_embeddings.weight`` (same name, same initial value); parallelism keeps the two
equal by summing their gradients. The model knows nothing of process groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_th.data.tokenizer import padded_vocab_size
from megatron_th.model.blocks import RotaryEmbedding, TransformerLayer, make_norm
from megatron_th.model.documents import DocumentPlan


def _embedding(rows: int, width: int) -> nn.Embedding:
    """nn.Embedding, without its normal_ init when built on the meta device (nothing to draw there;
    the real weights come from model/init.py or a checkpoint). Elsewhere torch's default init."""
    weight = torch.empty(rows, width)
    return nn.Embedding(rows, width, _weight=weight) if weight.is_meta else nn.Embedding(rows, width)


def scale_embeddings(x: torch.Tensor, scale: float | None) -> torch.Tensor:
    """x * scale with the scale rounded to x's dtype first (transformers' Gemma3TextScaledWordEmbedding:
    ``embed_scale.to(weight.dtype)``); ``scale`` None: x unchanged."""
    return x if scale is None else x * torch.tensor(scale, dtype=x.dtype, device=x.device)


class Embedding(nn.Module):
    def __init__(self, cfg, padded_vocab: int, with_positions: bool):
        super().__init__()
        # on the meta device nn.Embedding's own normal_ init is skipped: there it costs ~1.2 s per
        # process (it imports torch._dynamo), and build_model / parallelize draw the weights anyway
        self.word_embeddings = _embedding(padded_vocab, cfg.hidden_size)
        self.position_embeddings = _embedding(cfg.max_position_embeddings, cfg.hidden_size) if with_positions else None
        self.dropout = cfg.hidden_dropout
        self.scale = cfg.hidden_size ** 0.5 if getattr(cfg, "scale_embeddings", False) else None

    def forward(self, tokens, position_ids):
        x = scale_embeddings(self.word_embeddings(tokens), self.scale)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        return F.dropout(x, self.dropout, self.training)


class LMHead(nn.Module):
    """Logits over the true vocabulary (padding dropped) or the per-token loss. Holds no weights:
    the weight is the (tied) embedding or the output layer. Parallelism swaps this module."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x, weight, labels=None):
        if labels is None:
            return F.linear(x, weight)[..., : self.vocab_size]
        # chunked over tokens, logits recomputed in backward: never the full fp32 [b*s, V] (model/loss.py)
        from megatron_th.model.loss import lm_cross_entropy

        return lm_cross_entropy(x, weight, labels, self.vocab_size)


class GPTModel(nn.Module):
    def __init__(self, cfg, vocab_size: int, layer_range: tuple[int, int] | None = None,
                 pre_process: bool = True, post_process: bool = True):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, cfg.make_vocab_size_divisible_by)
        self.pre_process, self.post_process = pre_process, post_process
        self.tied = not cfg.untie_embeddings_and_output_weights
        learned = cfg.position_embedding_type == "learned_absolute"
        if pre_process or (post_process and self.tied):
            self.embedding = Embedding(cfg, self.padded_vocab_size, learned and pre_process)
        self.rope = RotaryEmbedding.from_config(cfg) if not learned else None
        local = not learned and getattr(cfg, "rope_local_base_freq", None) is not None
        self.rope_local = RotaryEmbedding.from_config(cfg, local=True) if local else None
        lo, hi = layer_range if layer_range is not None else (0, cfg.num_layers)
        self.layers = nn.ModuleDict({str(i): TransformerLayer(cfg, i) for i in range(lo, hi)})
        if post_process:
            self.final_norm = make_norm(cfg, cfg.hidden_size)
            if not self.tied:
                self.output_layer = nn.Linear(cfg.hidden_size, self.padded_vocab_size, bias=False)
            self.lm_head = LMHead(vocab_size)
        self.recompute_full = cfg.recompute_granularity == "full"

    def head_weight(self) -> torch.Tensor:
        return self.embedding.word_embeddings.weight if self.tied else self.output_layer.weight

    def forward(self, tokens=None, position_ids=None, hidden_states=None, cu_seqlens=None,
                labels=None, loss_mask=None, documents=None):
        """First stage: ``tokens``; later stages: ``hidden_states`` [b, s, h].

        Document masking: ``documents``, a DocumentPlan built on the host once per micro-batch
        (training/step.py model_inputs), or ``cu_seqlens`` (1-D int tensor, planned here: one read
        of its values). The plan is prepared for the attention backend once, before the layers,
        and every layer reads it without a host sync. Raises ValueError if both are given.

        Returns hidden states (not the last stage), logits [b, s, vocab] (no labels; padded
        vocab dropped), or the per-token loss [b, s] (labels given; multiply by loss_mask and
        average outside, so the mean can span micro-batches and ranks).
        """
        if self.pre_process:
            b, s = tokens.shape
            if position_ids is None:
                position_ids = torch.arange(s, device=tokens.device).expand(b, s)
            x = self.embedding(tokens, position_ids)
        else:
            x = hidden_states
            b, s = x.shape[:2]
            if position_ids is None:
                position_ids = torch.arange(s, device=x.device).expand(b, s)
        rope = self.rope(position_ids, x.dtype) if self.rope is not None else None
        if self.rope_local is not None:
            rope = {"global": rope, "local": self.rope_local(position_ids, x.dtype)}
        documents = self._plan(documents, cu_seqlens, b, position_ids.shape[1], x)
        for layer in self.layers.values():
            if self.recompute_full and self.training:
                x = checkpoint(layer, x, rope, documents, use_reentrant=False)
            else:
                x = layer(x, rope, documents)
        if not self.post_process:
            return x
        return self.lm_head(self.final_norm(x), self.head_weight(), labels)

    def _plan(self, documents, cu_seqlens, b: int, s: int, x: torch.Tensor):
        """The micro-batch's DocumentPlan (or None), prepared for this model's attention backend."""
        if cu_seqlens is not None:
            if documents is not None:
                raise ValueError("GPTModel.forward takes cu_seqlens or documents, not both")
            documents = DocumentPlan(cu_seqlens, b, s, device=x.device)
        if documents is not None:
            # layers share the backend, width and dropout; they differ only by window: one per window
            by_window = {layer.self_attention.window: layer.self_attention for layer in self.layers.values()}
            for attn in by_window.values():
                attn.prepare(documents, x.dtype, x.device)
        return documents


def build_model(cfg, vocab_size: int, seed: int, device="cpu", dtype=torch.float32, **stage) -> GPTModel:
    """A plain model (or one pipeline stage of it) holding the seeded initial weights."""
    from megatron_th.model.init import init_model

    with torch.device("meta"):
        model = GPTModel(cfg, vocab_size, **stage)
    model.to_empty(device="cpu")
    init_model(model, cfg, seed)
    return model.to(device=device, dtype=dtype)
