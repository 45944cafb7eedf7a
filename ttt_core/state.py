"""Per-layer recurrent state of the two mixers. Batch is the first dim of every tensor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class _TensorFields:
    """Apply one function to every tensor field (skipping None); the basis of cache surgery."""

    def map(self, fn: Callable[[Tensor], Tensor]):
        return replace(
            self,
            **{
                f.name: fn(getattr(self, f.name))
                for f in fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass
class FastWeightState(_TensorFields):
    """TTT-Linear state of one layer.

    W: (B, H, d, d) fp32, the current fast weight (what the next token reads).
    anchor: (B, H, d, d) fp32, chunked decode only: W at the start of the current chunk; the
    running sum of the chunk's updates so far is `anchor - W`.
    """

    W: Tensor
    anchor: Tensor | None = None

    @property
    def pending(self) -> Tensor | None:
        """Sum of `eta_s g_s k_s^T` over the current chunk's tokens so far (chunked decode)."""
        return None if self.anchor is None else self.anchor - self.W


@dataclass
class KVState(_TensorFields):
    """Attention state of one layer: keys/values (B, H, L, d) and valid (B, L) (False = padding)."""

    k: Tensor
    v: Tensor
    valid: Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def padded_to(self, length: int) -> KVState:
        """Right-pad the time axis to `length` with invalid (masked) slots."""
        extra = length - self.length
        return KVState(
            k=F.pad(self.k, (0, 0, 0, extra)),
            v=F.pad(self.v, (0, 0, 0, extra)),
            valid=F.pad(self.valid, (0, extra), value=False),
        )

    @staticmethod
    def empty(batch: int, heads: int, head_dim: int, like: Tensor) -> KVState:
        return KVState(
            k=like.new_zeros(batch, heads, 0, head_dim),
            v=like.new_zeros(batch, heads, 0, head_dim),
            valid=torch.zeros(batch, 0, dtype=torch.bool, device=like.device),
        )
