"""The precision rule of every reduction-sensitive step (norms, RoPE angles, losses, fast
weights): low precision (bf16, fp16) is upcast to fp32; fp32 stays fp32; fp64 stays fp64. Never
a downcast, so a `.double()` model is fp64 end to end and its gradients can be checked against
finite differences."""

from __future__ import annotations

import torch
from torch import Tensor


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or `dtype` when it is wider (fp64)."""
    return torch.promote_types(dtype, torch.float32)


def upcast(x: Tensor) -> Tensor:
    """`x` in `wide_dtype(x.dtype)` (itself when already there)."""
    return x.to(wide_dtype(x.dtype))
