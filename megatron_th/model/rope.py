"""Rotary position embeddings: inverse frequencies (plain or scaled) and cos/sin tables.

Dimension i is rotated with i + hd/2 (HF Llama's ``rotate_half``). The inverse frequencies are
``theta^(-2i/hd)`` for i < hd/2, optionally rescaled for long contexts exactly as transformers'
``modeling_rope_utils.py`` defines the ``rope_type``:

- ``linear`` (``_compute_linear_scaling_rope_parameters``): every frequency / factor.
- ``llama3`` (``_compute_llama3_parameters``; Llama 3.1 report, Meta's reference code): with
  wavelength ``2 pi / f`` and L = original_max_position_embeddings, frequencies of wavelength
  > L / low_freq_factor are divided by factor, those < L / high_freq_factor kept, and the band
  between interpolated by ``s = (L / wavelength - low) / (high - low)``:
  ``(1 - s) f / factor + s f``.
- ``dynamic`` (``_compute_dynamic_ntk_parameters``, dynamic NTK): when the longest position in the
  batch ``n = max(position_ids) + 1`` exceeds ``max_position_embeddings`` M, the base becomes
  ``theta * (factor n / M - (factor - 1))^(hd / (hd - 2))``; otherwise plain RoPE. transformers
  keeps the grown table across calls (state); this is the stateless form, what a fresh
  transformers model computes for the same batch. It reads ``max(position_ids)`` (one host sync
  per forward, only for this kind and only when a sequence can exceed M).

Angles are computed in fp32 from fp64 frequencies rounded to fp32, then cos/sin cast to the
activation dtype, as in transformers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("default", "linear", "dynamic", "llama3")


def inv_frequencies(head_dim: int, theta: float, kind: str = "default", factor: float = 1.0,
                    low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                    original_max_position_embeddings: int | None = None) -> torch.Tensor:
    """float64 [head_dim / 2] inverse frequencies for a position-independent ``kind`` (default,
    linear, llama3; ``dynamic`` at its unscaled base). Raises ValueError for an unknown kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown RoPE scaling {kind!r}; known: {', '.join(KINDS)}")
    # on the CPU even inside a `with torch.device("meta")` build: these are constants, not weights
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        old = float(original_max_position_embeddings)
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low_freq_factor, inv / factor, inv)
        smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high_freq_factor) & (wavelen <= old / low_freq_factor)
        return torch.where(medium, smoothed, scaled)
    return inv


class RotaryEmbedding(nn.Module):
    """cos/sin tables ``[b, 1, s, hd]`` for position ids ``[b, s]`` (positions may restart per
    document). ``kind``/``factor``/... as in ``inv_frequencies``; ``max_position_embeddings`` is
    the M of dynamic scaling."""

    def __init__(self, head_dim: int, base: float, kind: str = "default", factor: float = 1.0,
                 low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                 original_max_position_embeddings: int | None = None, max_position_embeddings: int | None = None):
        super().__init__()
        self.head_dim, self.base, self.kind, self.factor = head_dim, float(base), kind, float(factor)
        self.max_positions = max_position_embeddings
        self._inv = inv_frequencies(head_dim, base, kind, factor, low_freq_factor, high_freq_factor,
                                    original_max_position_embeddings)
        self._on: dict = {}

    @classmethod
    def from_config(cls, cfg, local: bool = False) -> "RotaryEmbedding":
        """The global RoPE of ModelConfig ``cfg`` (with its scaling), or with ``local`` the plain
        RoPE of the sliding-window layers at ``rope_local_base_freq`` (Gemma 3)."""
        if local:
            return cls(cfg.kv_channels, cfg.rope_local_base_freq)
        if not getattr(cfg, "use_rope_scaling", False):
            return cls(cfg.kv_channels, cfg.rotary_base)
        return cls(cfg.kv_channels, cfg.rotary_base, cfg.rope_scaling_type, cfg.rope_scaling_factor,
                   cfg.rope_scaling_low_freq_factor, cfg.rope_scaling_high_freq_factor,
                   cfg.rope_scaling_original_max_position_embeddings, cfg.max_position_embeddings)

    def _frequencies(self, position_ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "dynamic" and self.max_positions and position_ids.shape[-1] > self.max_positions:
            n = int(position_ids.max()) + 1  # host sync: only when a row may pass the trained context
            if n > self.max_positions:
                hd = self.head_dim
                base = self.base * ((self.factor * n / self.max_positions) - (self.factor - 1)) ** (hd / (hd - 2))
                return inv_frequencies(hd, base).float().to(position_ids.device)
        key = position_ids.device
        if key not in self._on:
            self._on[key] = self._inv.float().to(key)
        return self._on[key]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self._frequencies(position_ids)
        emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, hd]
        return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)  # [b, 1, s, hd]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, heads, s, hd] rotated by the tables of ``RotaryEmbedding`` (rotate_half pairing)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
