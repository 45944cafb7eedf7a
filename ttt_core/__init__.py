"""TTT-Linear language model: config, ops, mixers, model, cache, and its on-disk format
(`TTTLM.save_pretrained` / `from_pretrained`, `PretrainedOutputs`).

Also the bottom of the project, so it holds the mechanisms every package shares, one module
each and none importing torch: `files` (atomic writes, sha256, checksummed directories),
`dotted` (dotted overrides, deep merge), `validation` (one-line pydantic errors), `telemetry`
(MLflow/Prefect telemetry off), `identity` (identity vs operational config fields), `names`
(the mixer and family names).

Names are imported on first use: a name of a torch-free module loads only that module (so
data_stage, which must not load torch, can use them); any other name loads the model modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Cache, KVCache, TTTCache
    from .config import PRESETS, ModelConfig, family_of, family_settings
    from .dotted import deep_merge, flatten_dotted, nest_dotted, parse_assignments
    from .files import (
        IntegrityError,
        atomic_directory,
        atomic_write_bytes,
        atomic_write_text,
        directory_digest,
        sha256_bytes,
        sha256_file,
        verify_checksums,
    )
    from .generate import GenerationResult, TokenStream, generate
    from .identity import IdentityConfig
    from .mixers import AttentionMixer, NoMixer, TTTLinearMixer
    from .model import TTTLM, ModelOutput
    from .names import Family, Mixer
    from .pretrained import PretrainedOutputs, is_pretrained
    from .telemetry import telemetry_off
    from .validation import ConfigModel, error_summary

# Modules that import no torch: their names are bound one module at a time.
_TORCH_FREE = {
    "dotted": ("deep_merge", "flatten_dotted", "nest_dotted", "parse_assignments"),
    "files": (
        "IntegrityError",
        "atomic_directory",
        "atomic_write_bytes",
        "atomic_write_text",
        "directory_digest",
        "sha256_bytes",
        "sha256_file",
        "verify_checksums",
    ),
    "identity": ("IdentityConfig",),
    "names": ("Family", "Mixer"),
    "telemetry": ("telemetry_off",),
    "validation": ("ConfigModel", "error_summary"),
}

_WHERE = {
    "Cache": "cache",
    "KVCache": "cache",
    "TTTCache": "cache",
    "PRESETS": "config",
    "family_of": "config",
    "family_settings": "config",
    "ModelConfig": "config",
    "GenerationResult": "generate",
    "TokenStream": "generate",
    "generate": "generate",
    "AttentionMixer": "mixers",
    "NoMixer": "mixers",
    "TTTLinearMixer": "mixers",
    "TTTLM": "model",
    "ModelOutput": "model",
    "PretrainedOutputs": "pretrained",
    "is_pretrained": "pretrained",
}

_FREE_WHERE = {name: module for module, names in _TORCH_FREE.items() for name in names}

__all__ = [
    "PRESETS",
    "TTTLM",
    "AttentionMixer",
    "Cache",
    "ConfigModel",
    "Family",
    "GenerationResult",
    "IdentityConfig",
    "IntegrityError",
    "KVCache",
    "Mixer",
    "ModelConfig",
    "ModelOutput",
    "NoMixer",
    "PretrainedOutputs",
    "TTTCache",
    "TTTLinearMixer",
    "TokenStream",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_text",
    "deep_merge",
    "directory_digest",
    "error_summary",
    "family_of",
    "family_settings",
    "flatten_dotted",
    "generate",
    "is_pretrained",
    "nest_dotted",
    "parse_assignments",
    "sha256_bytes",
    "sha256_file",
    "telemetry_off",
    "verify_checksums",
]


def __getattr__(name: str) -> Any:
    """A torch-free name binds its own module's names. Any other binds every model name at
    once, so the function `generate` (not the submodule of that name, which importing it binds
    here) is what `ttt_core.generate` means."""
    if name in _FREE_WHERE:
        module = importlib.import_module(f".{_FREE_WHERE[name]}", __name__)
        for public in _TORCH_FREE[_FREE_WHERE[name]]:
            globals()[public] = getattr(module, public)
        return globals()[name]
    if name not in _WHERE:
        raise AttributeError(f"module 'ttt_core' has no attribute {name!r}")
    for public, module in _WHERE.items():
        globals()[public] = getattr(importlib.import_module(f".{module}", __name__), public)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, *_FREE_WHERE])
