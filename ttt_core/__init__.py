"""TTT-Linear language model: config, ops, mixers, model, cache, and its on-disk format
(`TTTLM.save_pretrained` / `from_pretrained`; the integrity helpers in `ttt_core.files`).

Names are imported on first use, so `import ttt_core.files` (used by data_stage, which must not
load torch) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Cache, KVCache, TTTCache
    from .config import PRESETS, ModelConfig
    from .generate import GenerationResult, TokenStream, generate
    from .mixer import AttentionMixer, NoMixer, TTTLinearMixer
    from .model import TTTLM, ModelOutput
    from .pretrained import is_pretrained

_WHERE = {
    "Cache": "cache",
    "KVCache": "cache",
    "TTTCache": "cache",
    "PRESETS": "config",
    "ModelConfig": "config",
    "GenerationResult": "generate",
    "TokenStream": "generate",
    "generate": "generate",
    "AttentionMixer": "mixer",
    "NoMixer": "mixer",
    "TTTLinearMixer": "mixer",
    "TTTLM": "model",
    "ModelOutput": "model",
    "is_pretrained": "pretrained",
}

__all__ = [
    "PRESETS",
    "TTTLM",
    "AttentionMixer",
    "Cache",
    "GenerationResult",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "NoMixer",
    "TTTCache",
    "TTTLinearMixer",
    "TokenStream",
    "generate",
    "is_pretrained",
]


def __getattr__(name: str) -> Any:
    """Bind every public name at the first use of any, so the function `generate` (not the
    submodule of that name, which importing it binds here) is what `ttt_core.generate` means."""
    if name not in _WHERE:
        raise AttributeError(f"module 'ttt_core' has no attribute {name!r}")
    for public, module in _WHERE.items():
        globals()[public] = getattr(importlib.import_module(f".{module}", __name__), public)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
