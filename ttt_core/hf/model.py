"""`TTTLinearForCausalLM`: a transformers causal LM that is a `TTTLM` inside.

No second implementation: every weight and every computation is the wrapped `TTTLM`'s. Prefill
(the first forward, or a new user turn of several tokens) runs `TTTLM.forward` (the dual form),
each later single token runs `TTTLM.decode` (online or chunked GD, the config's `decode_mode`),
which is what the project's own `ttt_core.generate` does.

Loading is transformers' own `from_pretrained` (every option it has: `dtype`/`torch_dtype`,
`device_map`, ...): the project's `config.json` is a `TTTLinearConfig`, and the weights of
`model.safetensors` (a `TTTLM` state dict) load under `base_model_prefix`. The only addition is
the project's integrity rule: a directory with `checksums.json` is verified before transformers
reads it. Saving writes the project's format (`TTTLM.save_pretrained`), so an export of
`python -m train_stage export` and a `save_pretrained` directory are the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import DecodeMode
from ..files import verify_checksums
from ..model import TTTLM
from ..pretrained import MODEL_TYPE, refuse_legacy
from .cache import TTTStateCache
from .config import TTTLinearConfig

# Keyword arguments transformers passes along by convention; they are honoured only in their
# default (off) state, any other value is refused rather than silently ignored.
_OFF_BY_DEFAULT = ("output_attentions", "output_hidden_states", "position_ids", "token_type_ids")


class TTTLinearForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TTTLinearConfig
    base_model_prefix = "model"  # a TTTLM state dict (the saved format) loads under `model.`
    main_input_name = "input_ids"
    # With `tie_embeddings` the saved weights hold embed.weight only (TTTLM's format); the
    # config's `tie_word_embeddings` tells transformers to tie the head to it after loading.
    _tied_weights_keys: ClassVar[dict[str, str]] = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: TTTLinearConfig, model: TTTLM | None = None):
        super().__init__(config)
        self.model = model if model is not None else TTTLM(config.model_config())
        self.post_init()

    @classmethod
    def from_ttt(
        cls, model: TTTLM, *, decode_mode: DecodeMode | None = None
    ) -> TTTLinearForCausalLM:
        """Wrap `model` (its modules are shared, not copied); `decode_mode` overrides the
        config's choice of how generation advances the TTT state."""
        model_config = model.config
        if decode_mode is not None:
            model_config = model_config.model_copy(update={"decode_mode": decode_mode})
        wrapped = cls(TTTLinearConfig.from_model_config(model_config), model=model)
        return wrapped.train(model.training)

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: `TTTLM` initialises its own parameters when built (`reset_parameters`), and
        a wrapped or loaded model must keep the weights it has."""

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    @property
    def decode_mode(self) -> DecodeMode:
        return self.config.model["decode_mode"]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: TTTStateCache | None = None,
        past_key_values: TTTStateCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) for `input_ids` (B, T) continuing `cache` (or `past_key_values`, its
        older name); with `use_cache` the cache is updated in place and returned. Every row is
        at the same position: an `attention_mask` with padding is refused."""
        _refuse_unsupported(kwargs)
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache as `cache` or `past_key_values`, not both")
            cache = past_key_values
        if cache is not None and not isinstance(cache, TTTStateCache):
            raise TypeError(f"cache: a TTTStateCache is needed, got {type(cache).__name__}")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "attention_mask: padding is not supported (every row must be at the same "
                "position); generate rows of different lengths one at a time"
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = TTTStateCache()
        state = cache.state if cache is not None else None
        if state is not None and input_ids.shape[1] == 1:
            out = self.model.decode(input_ids, state)
        else:
            if state is None and cache is not None:
                state = self.model.new_cache(input_ids.shape[0], decode_mode=self.decode_mode)
            out = self.model(input_ids, cache=state)
        if cache is not None:
            cache.state = out.cache
        return CausalLMOutputWithPast(logits=out.logits, cache=cache if use_cache else None)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """transformers must not make its key/value cache: `forward` makes a TTTStateCache."""
        return False

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **kwargs
    ):
        """transformers repeats the input rows for beams / `num_return_sequences`; a cache
        passed in (a continued conversation) gets the same rows."""
        input_ids, kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **kwargs
        )
        cache = kwargs.get("cache")
        if expand_size > 1 and isinstance(cache, TTTStateCache) and cache.state is not None:
            cache.batch_repeat_interleave(expand_size)
        return input_ids, kwargs

    def save_pretrained(
        self, save_directory: Path | str, *, overwrite: bool = False, **kwargs: Any
    ) -> Path:
        """The project's format (`TTTLM.save_pretrained`: config.json with `model_type`,
        model.safetensors, checksums.json), written atomically; an existing directory is
        refused unless `overwrite`. transformers' saving options are refused. The saved
        `decode_mode` is the wrapped TTTLM's (a `from_ttt(..., decode_mode=)` override is not
        written; pass it again to `from_pretrained`)."""
        if kwargs:
            raise TypeError(f"save_pretrained: unsupported options {sorted(kwargs)}")
        return self.model.save_pretrained(save_directory, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any
    ) -> TTTLinearForCausalLM:
        """transformers' `from_pretrained`, unchanged (all its options; `decode_mode="chunked"`
        is a config override like any other). A local directory is first verified against its
        `checksums.json` (`IntegrityError` naming a changed or missing file); an export of the
        old format is refused with the command that rewrites it."""
        if pretrained_model_name_or_path is not None:
            directory = Path(pretrained_model_name_or_path)
            if directory.is_dir():
                refuse_legacy(directory)
                verify_checksums(directory)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def _refuse_unsupported(kwargs: dict[str, Any]) -> None:
    on = sorted(k for k in _OFF_BY_DEFAULT if kwargs.get(k) not in (None, False))
    unknown = sorted(set(kwargs) - set(_OFF_BY_DEFAULT))
    if on or unknown:
        raise ValueError(f"TTTLinearForCausalLM.forward: unsupported arguments {on + unknown}")


def register() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve the model type `ttt_linear`."""
    AutoConfig.register(MODEL_TYPE, TTTLinearConfig, exist_ok=True)
    AutoModelForCausalLM.register(TTTLinearConfig, TTTLinearForCausalLM, exist_ok=True)
