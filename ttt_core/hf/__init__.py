"""Hugging Face transformers interop: `TTTLinearConfig`, `TTTLinearForCausalLM` (a `TTTLM`
inside, so `generate`, beam search and `AutoModelForCausalLM` work on the project's model) and
`TTTStateCache` (the project's cache as a transformers `Cache`); `load_tokenizer` gives an
export's tokenizer as a transformers tokenizer.

Needs the optional extra `[hf]` (transformers); importing this package registers the model type
`ttt_linear` with `AutoConfig` / `AutoModelForCausalLM`. `import ttt_core` never imports it.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # a one-line hint instead of a bare ModuleNotFoundError deep inside
    raise ImportError("ttt_core.hf needs transformers: pip install 'ttt-bringup[hf]'") from e

from .cache import TTTStateCache
from .config import TTTLinearConfig
from .model import TTTLinearForCausalLM, register
from .tokenizer import load_tokenizer

__all__ = ["TTTLinearConfig", "TTTLinearForCausalLM", "TTTStateCache", "load_tokenizer", "register"]

register()
