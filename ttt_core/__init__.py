"""TTT-Linear language model: config, ops, mixers, model, cache. Pure PyTorch, no I/O besides
cache save/load."""

from .cache import Cache, KVCache, TTTCache
from .config import PRESETS, ModelConfig
from .generate import GenerationResult, TokenStream, generate
from .mixer import AttentionMixer, NoMixer, TTTLinearMixer
from .model import TTTLM, ModelOutput

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
]
