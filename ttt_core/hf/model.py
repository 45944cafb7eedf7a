"""`TTTLinearForCausalLM`: a transformers causal LM that is a `TTTLM` inside.

No second implementation: every weight and every computation is the wrapped `TTTLM`'s. Prefill
(the first forward, or a new user turn of several tokens) runs `TTTLM.forward` (the dual form),
each later single token runs `TTTLM.decode` (online or chunked GD, the config's `decode_mode`),
which is what the project's own `ttt_core.generate` does. Saving and loading use the project's
format (`TTTLM.save_pretrained` / `from_pretrained`, checksums verified), so an export of
`python -m train_stage export` loads with `AutoModelForCausalLM.from_pretrained(export_dir)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import DecodeMode
from ..model import TTTLM
from ..pretrained import MODEL_TYPE, read_config
from .cache import TTTStateCache
from .config import TTTLinearConfig

# Keyword arguments transformers passes along by convention; they are honoured only in their
# default (off) state, any other value is refused rather than silently ignored.
_OFF_BY_DEFAULT = ("output_attentions", "output_hidden_states", "position_ids", "token_type_ids")
# What `AutoModelForCausalLM.from_pretrained` forwards for the hub, adapters and remote code; a
# local directory of this format needs none, so only their empty defaults are accepted.
_HUB_KWARGS = (
    "adapter_kwargs",
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "token",
    "trust_remote_code",
)


class TTTLinearForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TTTLinearConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

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
        cls,
        pretrained_model_name_or_path: Path | str,
        *model_args: Any,
        config: TTTLinearConfig | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        decode_mode: DecodeMode | None = None,
        **kwargs: Any,
    ) -> TTTLinearForCausalLM:
        """Load a local directory written by `save_pretrained` or `train_stage export` (every
        checksum verified) in eval mode. A `config` (as `AutoModelForCausalLM` passes it) must
        describe the same model as the directory's config.json; its decode_mode is used unless
        `decode_mode` is given."""
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        unsupported = sorted(kwargs) + [k for k, v in hub.items() if v]
        if model_args or unsupported:
            raise TypeError(
                f"from_pretrained: unsupported arguments {unsupported or list(model_args)} "
                "(a local directory is loaded with device, dtype and decode_mode only)"
            )
        directory = Path(pretrained_model_name_or_path)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a local directory (the hub is not used)")
        if config is not None:
            differing = read_config(directory).identity_differences(config.model)
            if differing:
                raise ValueError(f"config: does not describe {directory} (differs in {differing})")
            decode_mode = decode_mode or config.model["decode_mode"]
        model = TTTLM.from_pretrained(directory, device=device, dtype=dtype)
        return cls.from_ttt(model, decode_mode=decode_mode)


def _refuse_unsupported(kwargs: dict[str, Any]) -> None:
    on = sorted(k for k in _OFF_BY_DEFAULT if kwargs.get(k) not in (None, False))
    unknown = sorted(set(kwargs) - set(_OFF_BY_DEFAULT))
    if on or unknown:
        raise ValueError(f"TTTLinearForCausalLM.forward: unsupported arguments {on + unknown}")


def register() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve the model type `ttt_linear`."""
    AutoConfig.register(MODEL_TYPE, TTTLinearConfig, exist_ok=True)
    AutoModelForCausalLM.register(TTTLinearConfig, TTTLinearForCausalLM, exist_ok=True)
