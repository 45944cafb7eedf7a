"""Rotary position embedding on (B, H, T, d) tensors, positions given per row and token."""

from __future__ import annotations

import torch
from torch import Tensor

from .precision import wide_dtype


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotate pairs (x[..., i], x[..., i + d/2]) of x (B, H, T, d) by angle pos / theta^(2i/d).

    positions: (B, T) integer positions. Computed in fp32 (fp64 for fp64 x, see
    `ttt_core.precision`), returned in x's dtype.
    """
    return _rotate(x, *_cos_sin(x, positions, theta))


def apply_rope_pair(q: Tensor, k: Tensor, positions: Tensor, theta: float) -> tuple[Tensor, Tensor]:
    """`apply_rope` of q and k (same shape and dtype), the angles computed once."""
    cos_sin = _cos_sin(q, positions, theta)
    return _rotate(q, *cos_sin), _rotate(k, *cos_sin)


def _cos_sin(x: Tensor, positions: Tensor, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the angles (B, 1, T, d/2) for x (B, H, T, d), in x's wide dtype."""
    d, dtype = x.shape[-1], wide_dtype(x.dtype)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=dtype) / d)
    angles = positions.to(dtype)[:, None, :, None] * inv_freq
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
