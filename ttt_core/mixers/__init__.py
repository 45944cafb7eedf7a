"""Sequence mixers with one interface, one module each: `TTTLinearMixer`, `LactMixer` (LaCT:
large-chunk fast weights + sliding-window attention), the `AttentionMixer` and
`SlidingWindowMixer` baselines and `NoMixer`, the no-context control.

All take the normed block input x (B, T, D) and absolute token positions (B, T), and return a
`MixerOutput`. `forward` is prefill/training; `decode` consumes tokens one at a time from a
state (`init_state`); `MIXERS` maps each `ModelConfig` mixer name to its class.
"""

from __future__ import annotations

from torch import nn

from .attention import AttentionMixer
from .common import MixerOutput
from .lact import LactMixer
from .none import NoMixer
from .swa import SlidingWindowMixer
from .ttt_linear import TTTLinearMixer

MIXERS: dict[str, type[nn.Module]] = {
    "ttt_linear": TTTLinearMixer,
    "lact": LactMixer,
    "attention": AttentionMixer,
    "swa": SlidingWindowMixer,
    "none": NoMixer,
}

__all__ = [
    "MIXERS",
    "AttentionMixer",
    "LactMixer",
    "MixerOutput",
    "NoMixer",
    "SlidingWindowMixer",
    "TTTLinearMixer",
]
