"""TTT-Linear language model: config, ops, mixers, model, cache. Pure PyTorch, no I/O besides
cache save/load."""

from .cache import KVCache, TTTCache
from .config import PRESETS, ModelConfig
from .generate import GenerationResult, TokenStream, generate
from .mixer import AttentionMixer, TTTLinearMixer
from .model import TTTLM, ModelOutput

__all__ = [
    "PRESETS",
    "TTTLM",
    "AttentionMixer",
    "GenerationResult",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "TTTCache",
    "TTTLinearMixer",
    "TokenStream",
    "generate",
]
