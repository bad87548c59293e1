"""Bytes of optimizer state each optimizer keeps, from parameter shapes alone (the estimator's
numbers; training/memory.py ``storage_bytes`` measures the same on a real rank).

Per parameter of local shape (R, C) or (n,), in fp32 elements (4 B each):

- adam: 2 per element (exp_avg, exp_avg_sq) = 8 B/param
- sgd: 1 per element with --sgd-momentum > 0 (momentum_buffer) = 4 B/param, else 0
- adafactor: R + C per matrix (row and column factors), n per vector (full second moment):
  about 0 B/param for the large matrices
- muon: 1 per element of a transformer-layer matrix (momentum_buffer), 2 per element of the rest
  (AdamW: embeddings, output layer, norms, biases)

plus the fp32 master of a 16-bit parameter (4 B/param) and the EMA (--ema-decay, 4 B/param). Under
Zero-1 the elementwise optimizers (adam, sgd) keep these for the elements of each bucket their DP
rank owns (``owned_numel`` of estimate/memory.py ``static_bytes``, about 1/DP), the others for the
parameters parallel/zero_params.py ``assign_owners`` gives their DP rank.
"""
from __future__ import annotations

from megatron_th.training.optimizers import FLAT_SHARDED


def state_elements(o, name: str, shape: tuple) -> int:
    """fp32 elements of --optimizer's state for one parameter of (local) ``shape``."""
    from megatron_th.training.optimizers.muon import is_matrix

    n = 1
    for d in shape:
        n *= d
    kind = getattr(o, "optimizer", "adam")
    if kind == "adam":
        return 2 * n
    if kind == "sgd":
        return n if o.sgd_momentum else 0
    if kind == "adafactor":
        return shape[0] + shape[1] if len(shape) >= 2 else n
    if kind == "muon":
        return n if is_matrix(name, _Shape(shape)) else 2 * n
    raise ValueError(f"--optimizer {kind!r}: expected adam, sgd, adafactor or muon")


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)

    def dim(self) -> int:
        return len(self.shape)


def rank_state_bytes(shapes: list, o, precision: str, dp: int, zero1: bool, owned_flat: int | None = None,
                     dp_rank: int = 0) -> dict:
    """{master, state, ema} bytes and the ``owned`` elements of one rank whose parameters are
    ``shapes`` ([(name, local shape)] in model order). ``owned_flat``: under Zero-1 with an
    elementwise optimizer, the elements this DP rank owns (estimate/memory.py ``static_bytes``)."""
    from megatron_th.parallel.zero_params import assign_owners

    sixteen = precision in ("bf16", "fp16")
    numels = []
    for _, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        numels.append(n)
    kind = getattr(o, "optimizer", "adam")
    ema = getattr(o, "ema_decay", None) is not None
    if kind in FLAT_SHARDED and zero1 and dp > 1:
        owned = owned_flat if owned_flat is not None else sum(numels)
        per = state_elements(o, "", (1,))  # elementwise: the same per element everywhere
        return {"master": 4 * owned if sixteen else 0, "state": 4 * per * owned, "ema": 4 * owned if ema else 0,
                "owned": owned}
    keep = range(len(shapes))
    if zero1 and dp > 1:
        owners = assign_owners(numels, dp)
        keep = [i for i in keep if owners[i] == dp_rank]
    elems = sum(numels[i] for i in keep)
    return {"master": 4 * elems if sixteen else 0,
            "state": 4 * sum(state_elements(o, shapes[i][0], shapes[i][1]) for i in keep),
            "ema": 4 * elems if ema else 0, "owned": elems}


def local_shapes(cfg, padded_vocab: int, pp_rank: int) -> list:
    """[(name, local shape)] of a rank of PP rank ``pp_rank`` (estimate/params.py), TP-split."""
    from megatron_th.estimate.params import stage_params, virtual_stages

    tp = cfg.parallel.tensor_model_parallel_size
    out = []
    for st in virtual_stages(cfg.model, cfg.parallel, pp_rank):
        for q in stage_params(cfg.model, padded_vocab, st["layer_range"], st["pre_process"], st["post_process"]):
            shape = list(q.shape)
            if q.tp_dim is not None:
                shape[q.tp_dim] //= tp
            out.append((q.name, tuple(shape)))
    return out


def with_optimizer_state(st: dict, cfg, padded_vocab: int, pp_rank: int, dp: int, dp_rank: int = 0) -> dict:
    """estimate/memory.py ``static_bytes``'s dict (of DP rank ``dp_rank``) with ``master`` and
    ``moments`` (all optimizer state, the EMA included; ``ema`` alone too) those of --optimizer and
    --ema-decay, and under Zero-1 by whole parameters no parameter buffer. AdamW without an EMA
    comes back unchanged."""
    o = cfg.optim
    kind = getattr(o, "optimizer", "adam")
    if kind == "adam" and getattr(o, "ema_decay", None) is None:
        return st
    prec = "bf16" if o.bf16 else ("fp16" if o.fp16 else "fp32")
    zero1 = cfg.parallel.use_distributed_optimizer
    b = rank_state_bytes(local_shapes(cfg, padded_vocab, pp_rank), o, prec, dp, zero1, st.get("owned_numel"), dp_rank)
    out = dict(st, master=b["master"], moments=b["state"] + b["ema"], ema=b["ema"], owned_numel=b["owned"])
    if zero1 and kind not in FLAT_SHARDED:  # no parameter buffer: Zero-1 by whole parameters all-reduces
        out["params"] = st["numel"] * {"bf16": 2, "fp16": 2}.get(prec, 4)
    out["total"] = out["params"] + out["grads"] + out["master"] + out["moments"]
    return out


def per_param(cfg, padded_vocab: int) -> float:
    """Optimizer-state bytes per parameter of the whole model (no Zero-1), the EMA included: 8 for
    AdamW, 4 for SGD with momentum, about 0 for Adafactor, between 4 and 8 for Muon (its AdamW
    share), + 4 with --ema-decay (estimate/memory.py ``bytes_per_param``)."""
    from megatron_th.estimate.params import stage_params

    o = cfg.optim
    whole = stage_params(cfg.model, padded_vocab, (0, cfg.model.num_layers), True, True)
    n = sum(q.numel for q in whole)
    state = sum(state_elements(o, q.name, q.shape) for q in whole)
    return 4.0 * state / max(n, 1) + (4.0 if getattr(o, "ema_decay", None) is not None else 0.0)
