"""Normalisation layers: LayerNorm / RMSNorm, optionally scaling by (1 + weight).

Plain norms are torch's ``nn.LayerNorm`` / ``nn.RMSNorm`` (unchanged numerics). With
``--apply-layernorm-1p`` (Megatron's flag; Gemma's convention) the stored weight w is a zero-centred
gain: the output is ``norm(x) * (1 + w)``, and w starts at 0. Following transformers'
``Gemma3RMSNorm`` (models/gemma3/modeling_gemma3.py), the 1p RMSNorm is computed in fp32 and cast
back: ``(x.float() * rsqrt(mean(x.float()^2) + eps) * (1 + w.float())).type_as(x)``. The scale is
applied in the forward and never folded into the stored weight, so HF round trips stay bitwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm1p(nn.Module):
    """RMSNorm with gain (1 + weight), in fp32. x [..., width] of any float dtype -> same dtype."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


class LayerNorm1p(nn.LayerNorm):
    """LayerNorm with gain (1 + weight) and bias (Megatron-core's ``apply_layernorm_1p``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


def make_norm(cfg, width: int) -> nn.Module:
    """The norm ``cfg`` asks for (``normalization``, ``norm_epsilon``, ``apply_layernorm_1p``) over
    the last dimension of size ``width``."""
    one_p = getattr(cfg, "apply_layernorm_1p", False)
    if cfg.normalization == "RMSNorm":
        return RMSNorm1p(width, cfg.norm_epsilon) if one_p else nn.RMSNorm(width, eps=cfg.norm_epsilon)
    return LayerNorm1p(width, eps=cfg.norm_epsilon) if one_p else nn.LayerNorm(width, eps=cfg.norm_epsilon)
