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
    d, dtype = x.shape[-1], wide_dtype(x.dtype)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=dtype) / d)
    angles = positions.to(dtype)[:, None, :, None] * inv_freq  # (B, 1, T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
