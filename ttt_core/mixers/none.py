"""`NoMixer`: the no-context control."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..state import EmptyState
from .common import MixerOutput


class NoMixer(nn.Module):
    """The no-context control: the mixer sublayer adds nothing, so each position's output
    depends on its own token only. No parameters (the block drops the norm in front too)."""

    def __init__(self, config: ModelConfig):
        super().__init__()

    def init_state(self, batch: int, *, cold: bool = False, chunked: bool = False) -> EmptyState:
        return EmptyState()

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: EmptyState | None = None,
        *,
        return_stats: bool = False,
    ) -> MixerOutput:
        return MixerOutput(torch.zeros_like(x), EmptyState(), None)

    def decode(self, x: Tensor, positions: Tensor, state: EmptyState) -> MixerOutput:
        return self.forward(x, positions, state)
