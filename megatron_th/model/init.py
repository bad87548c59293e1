"""Initial weights as a pure function of (seed, config, logical parameter name).

Every parameter is drawn from its own generator seeded by ``(seed, name)``, in its full logical
shape. A TP/PP layout takes slices of exactly these tensors, so every layout starts from the very
same model, and no rank needs the whole model in memory at once.
"""
from __future__ import annotations

import hashlib
import math

import torch


def param_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def skips_init(device) -> bool:
    """True for the ``meta`` device: parameters there have shapes and dtypes but no storage, so
    building on it draws no weights (nothing to fill; no full logical tensor is ever made). This
    sizes one rank of any model without its memory (tests/test_scale_dry_run.py); such a model
    cannot run until ``to_empty`` and a load."""
    return torch.device(device).type == "meta"


def init_tensor(name: str, shape, cfg, seed: int) -> torch.Tensor:
    """The fp32 initial value of logical parameter ``name`` (full, unsharded shape). Norm gains
    start at 1, or at 0 under ``apply_layernorm_1p`` (the norm scales by 1 + weight)."""
    leaf = name.rsplit(".", 1)[-1]
    if "layernorm" in name or "final_norm" in name:
        one_p = getattr(cfg, "apply_layernorm_1p", False)
        return torch.ones(shape) if leaf == "weight" and not one_p else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    std = cfg.init_method_std
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        std = std / math.sqrt(2.0 * cfg.num_layers)
    g = torch.Generator().manual_seed(param_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=g)


@torch.no_grad()
def init_model(model: torch.nn.Module, cfg, seed: int) -> None:
    """Fill every parameter of a plain (unsharded) model in place."""
    for name, p in model.named_parameters():
        p.copy_(init_tensor(name, tuple(p.shape), cfg, seed))
