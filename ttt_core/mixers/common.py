"""What every mixer shares: its output type, head splitting, and the prefill position rule."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor


class MixerOutput(NamedTuple):
    y: Tensor  # (B, T, D)
    state: Any  # the layer's new inference state (`ttt_core.state`); None without a state
    stats: dict[str, Tensor] | None  # TTT only, when asked for


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, H * d) -> (B, H, T, d)."""
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, d) -> (B, T, H * d)."""
    B, H, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d)


def common_start(positions: Tensor) -> int:
    """The position every row starts at; prefill of rows at different positions is refused."""
    start = positions[:, 0]
    if bool((start != start[0]).any()):
        raise ValueError(
            "prefill needs every row at the same position; rows are at "
            f"{start.tolist()}: prefill them separately and stack their caches"
        )
    return int(start[0])
