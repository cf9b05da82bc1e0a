"""Rotary position embeddings: the frequencies (with Llama 3's scaling), the angles of integer positions, and the
rotation of a head's query / key vectors (the half-split layout: dimension i pairs with i + Dh / 2)."""

from __future__ import annotations

import math

import torch

from dlm.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim / 2], float32: base^(-2i / d), then Llama 3's scaling when
    ``rope_scaling = "llama3"``: wavelengths longer than original_max_len / low_freq_factor are slowed by
    ``rope_factor``, those shorter than original_max_len / high_freq_factor kept, and the ones between interpolated
    linearly in original_max_len / wavelength."""
    d = cfg.head_dim or cfg.d_model // cfg.n_heads
    inv_freq = cfg.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    if cfg.rope_scaling == "none":
        return inv_freq
    factor, low, high, old = (
        cfg.rope_factor,
        cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor,
        cfg.rope_original_max_len,
    )
    wavelength = 2 * math.pi / inv_freq
    slowed = torch.where(wavelength > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelength - low) / (high - low)  # 0 at the long end of the band, 1 at its short end
    between = (wavelength >= old / high) & (wavelength <= old / low)
    return torch.where(between, (1 - smooth) * slowed / factor + smooth * slowed, slowed)


def rope_angles(
    positions: torch.Tensor, head_dim: int, base: float, inv_freq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE for integer ``positions`` [L] or [B, L] -> each [L, Dh] or [B, 1, L, Dh]; ``inv_freq``
    [Dh / 2] overrides base^(-2i / Dh) (Llama 3's scaled frequencies)."""
    if inv_freq is None:
        inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq.to(positions.device, torch.float32)  # (..., L, Dh/2), fp32
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, Dh)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, L, Dh), broadcast over heads
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
