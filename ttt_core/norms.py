"""`RMSNorm` over the last dim, shared by the blocks and the mixers that norm their outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .precision import upcast


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised in fp32 or wider (`ttt_core.precision`), returned in x's dtype."""
        wide = upcast(x)
        return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        ) * self.weight
