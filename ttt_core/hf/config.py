"""`TTTLinearConfig`: a transformers config holding one `ModelConfig`.

Its fields mirror the project's `config.json` (`{"format_version", "model": ModelConfig}` plus
`model_type`), so `AutoConfig.from_pretrained(export_dir)` reads an export unchanged.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ..config import DecodeMode, ModelConfig
from ..pretrained import FORMAT_VERSION, MODEL_TYPE


class TTTLinearConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    format_version: int = FORMAT_VERSION
    model: dict[str, Any] | None = None  # a dumped ModelConfig
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"TTTLinearConfig.format_version: {self.format_version!r}, this ttt_core reads "
                f"{FORMAT_VERSION}"
            )
        if self.model is None:
            raise ValueError("TTTLinearConfig.model: missing (a ModelConfig as a dict)")
        # Validate (and fill defaults) now, so a bad field fails here and not at model build.
        self.model = ModelConfig.model_validate(self.model).model_dump(mode="json")
        super().__post_init__(**kwargs)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> TTTLinearConfig:
        return cls(model=config.model_dump(mode="json"), **kwargs)

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` this config holds."""
        return ModelConfig.model_validate(self.model)

    @property
    def decode_mode(self) -> DecodeMode:
        """How generation advances the TTT state; settable, so `from_pretrained(dir,
        decode_mode="chunked")` overrides the saved one like any config attribute."""
        return self.model["decode_mode"]

    @decode_mode.setter
    def decode_mode(self, mode: DecodeMode) -> None:
        self.model = (
            self.model_config().model_copy(update={"decode_mode": mode}).model_dump(mode="json")
        )
        ModelConfig.model_validate(self.model)  # an unknown mode fails here, naming the field

    # What generic transformers code (generation, lm-eval, weight tying) looks up on a config.
    @property
    def tie_word_embeddings(self) -> bool:
        return self.model["tie_embeddings"]

    @property
    def vocab_size(self) -> int:
        return self.model["vocab_size"]

    @property
    def hidden_size(self) -> int:
        return self.model["d_model"]

    @property
    def num_hidden_layers(self) -> int:
        return self.model["n_layers"]
