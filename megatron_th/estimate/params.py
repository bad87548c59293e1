"""Parameter counts from the config alone: the model, each pipeline stage, each rank.

``stage_params`` lists a stage's parameters exactly as ``GPTModel.named_parameters()`` yields them
(same names, logical shapes, same order) and says which dimension tensor parallelism splits;
``rank_params`` gives one rank's local sizes in that order, which is what the gradient buffer
layout (and so the bucket padding) depends on. Tests compare both with real models.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_th.data.tokenizer import padded_vocab_size


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple
    tp_dim: int | None  # the dimension split over TP ranks (None: replicated on every TP rank)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def local_numel(self, tp: int) -> int:
        return self.numel // tp if self.tp_dim is not None else self.numel


def _norm(m, prefix: str, width: int | None = None) -> list[Param]:
    """A norm over ``width`` (default hidden_size): weight, and bias for LayerNorm (replicated over TP)."""
    width = width or m.hidden_size
    out = [Param(prefix + ".weight", (width,), None)]
    if m.normalization == "LayerNorm":
        out.append(Param(prefix + ".bias", (width,), None))
    return out


def layer_params(m, i: int) -> list[Param]:
    """One transformer layer (``m`` is a finalized ModelConfig), in the order model/blocks.py
    registers them: input norm, qkv, proj, QK-norm (``[head_dim]`` each, replicated over TP), MLP
    norm, fc1, fc2, then the sandwich norms (post-attention, post-MLP)."""
    h, hd, f = m.hidden_size, m.kv_channels, m.ffn_hidden_size
    qkv = (m.num_attention_heads + 2 * m.num_query_groups) * hd
    bias = not m.disable_bias_linear
    pre = f"layers.{i}."
    out = _norm(m, pre + "input_layernorm")
    out.append(Param(pre + "self_attention.linear_qkv.weight", (qkv, h), 0))
    if bias or m.add_qkv_bias:
        out.append(Param(pre + "self_attention.linear_qkv.bias", (qkv,), 0))
    out.append(Param(pre + "self_attention.linear_proj.weight", (h, m.num_attention_heads * hd), 1))
    if bias:
        out.append(Param(pre + "self_attention.linear_proj.bias", (h,), None))
    if getattr(m, "qk_layernorm", False):
        out += _norm(m, pre + "self_attention.q_layernorm", hd) + _norm(m, pre + "self_attention.k_layernorm", hd)
    out += _norm(m, pre + "pre_mlp_layernorm")
    out.append(Param(pre + "mlp.linear_fc1.weight", (f * (2 if m.gated_linear_unit else 1), h), 0))
    if bias:
        out.append(Param(pre + "mlp.linear_fc1.bias", (f * (2 if m.gated_linear_unit else 1),), 0))
    out.append(Param(pre + "mlp.linear_fc2.weight", (h, f), 1))
    if bias:
        out.append(Param(pre + "mlp.linear_fc2.bias", (h,), None))
    if getattr(m, "sandwich_norm", False):
        out += _norm(m, pre + "post_self_attn_layernorm") + _norm(m, pre + "post_mlp_layernorm")
    return out


def stage_params(m, padded_vocab: int, layer_range: tuple, pre_process: bool, post_process: bool) -> list[Param]:
    """The parameters of one (virtual) pipeline stage, in ``named_parameters()`` order."""
    tied = not m.untie_embeddings_and_output_weights
    out = []
    if pre_process or (post_process and tied):  # the last stage keeps its own copy of a tied embedding
        out.append(Param("embedding.word_embeddings.weight", (padded_vocab, m.hidden_size), 0))
        if pre_process and m.position_embedding_type == "learned_absolute":
            out.append(Param("embedding.position_embeddings.weight", (m.max_position_embeddings, m.hidden_size), None))
    for i in range(*layer_range):
        out += layer_params(m, i)
    if post_process:
        out += _norm(m, "final_norm")
        if not tied:
            out.append(Param("output_layer.weight", (padded_vocab, m.hidden_size), 0))
    return out


def virtual_stages(m, par, pp_rank: int) -> list[dict]:
    """The chunks PP rank ``pp_rank`` holds: [{layer_range, pre_process, post_process, vs}]."""
    from megatron_th.parallel.stages import layer_ranges

    p = par.pipeline_model_parallel_size
    per = par.num_layers_per_virtual_pipeline_stage
    v = (m.num_layers // p) // per if per else 1
    ranges = layer_ranges(m.num_layers, p, v, par.decoder_first_pipeline_num_layers,
                          par.decoder_last_pipeline_num_layers)
    return [dict(vs=c * p + pp_rank, layer_range=ranges[c * p + pp_rank], pre_process=c * p + pp_rank == 0,
                 post_process=c * p + pp_rank == p * v - 1) for c in range(v)]


def rank_params(m, par, padded_vocab: int, pp_rank: int) -> list[tuple[str, int]]:
    """(name, local numel) of every parameter on a rank of PP rank ``pp_rank`` (any TP/DP rank:
    TP shards are equal, DP replicas identical), in the order the rank's model chunks list them."""
    tp = par.tensor_model_parallel_size
    out = []
    for st in virtual_stages(m, par, pp_rank):
        out += [(q.name, q.local_numel(tp)) for q in stage_params(m, padded_vocab, st["layer_range"],
                                                                 st["pre_process"], st["post_process"])]
    return out


def count(m, vocab_size: int) -> dict:
    """Parameter counts of the whole model (each tensor once)."""
    vp = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by)
    whole = stage_params(m, vp, (0, m.num_layers), True, True)
    by = {q.name: q.numel for q in whole}
    word = by["embedding.word_embeddings.weight"]
    pos = by.get("embedding.position_embeddings.weight", 0)
    out_layer = by.get("output_layer.weight", 0)
    total = sum(by.values())
    layer = sum(q.numel for q in layer_params(m, 0))
    return {"total": total, "embedding": word + pos, "word_embedding": word, "position_embedding": pos,
            "output_layer": out_layer, "per_layer": layer, "layers": layer * m.num_layers,
            "non_embedding": total - word - pos - out_layer, "padded_vocab": vp, "vocab": vocab_size}
