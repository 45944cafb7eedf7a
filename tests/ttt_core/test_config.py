"""ModelConfig validation, presets and parameter counts."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ttt_core import PRESETS, TTTLM, ModelConfig
from ttt_core.config import NOMINAL_PARAMS


def test_every_preset_validates_and_names_itself():
    for name in PRESETS:
        config = ModelConfig.from_preset(name)
        assert config.d_model % config.n_heads == 0


def test_overrides_are_validated():
    config = ModelConfig.from_preset("debug_tiny", n_layers=3, mixer="attention")
    assert (config.n_layers, config.mixer) == (3, "attention")
    with pytest.raises(pydantic.ValidationError, match="divisible by n_heads"):
        ModelConfig.from_preset("debug_tiny", n_heads=3)
    with pytest.raises(pydantic.ValidationError, match="chunk_size"):
        ModelConfig.from_preset("debug_tiny", chunk_size=0)
    with pytest.raises(pydantic.ValidationError, match="mixer"):
        ModelConfig.from_preset("debug_tiny", mixer="mamba")
    with pytest.raises(pydantic.ValidationError, match="no_such_field"):
        ModelConfig.from_preset("debug_tiny", no_such_field=1)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="small_cpu"):
        ModelConfig.from_preset("gpt5")


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize(
    "mixer", ["ttt_linear", "lact", "attention", "swa", "none", "hybrid", "e2e"]
)
def test_num_params_matches_the_module_on_meta(name, mixer):
    """`e2e`: swa with prime MLPs in the top quarter of the blocks (at least one)."""
    n_layers = ModelConfig.from_preset(name).n_layers
    e2e = dict(mixer="swa", e2e_suffix_layers=max(1, n_layers // 4))
    overrides = {
        "e2e": e2e,
        "hybrid": dict(mixer="ttt_linear", e2e_suffix_layers=0),
    }.get(mixer, dict(mixer=mixer, e2e_suffix_layers=0))
    config = ModelConfig.from_preset(name, **overrides)
    if mixer == "hybrid":  # attention at the bottom, TTT on top, one layer without a mixer
        n = config.n_layers
        layers = ("attention",) * (n // 2) + ("none",) + ("ttt_linear",) * (n - n // 2 - 1)
        config = config.model_copy(update={"layer_mixers": layers})
    with torch.device("meta"):
        model = TTTLM(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_params()


def test_layer_mixers_override_mixer_and_need_one_entry_per_layer():
    config = ModelConfig.from_preset(
        "debug_tiny", n_layers=4, layer_mixers=["attention", "attention", "none", "ttt_linear"]
    )
    assert config.mixers == ("attention", "attention", "none", "ttt_linear")
    assert config.mixer_name == "2xattention+none+ttt_linear"
    assert ModelConfig.from_preset("debug_tiny", mixer="none").mixers == ("none", "none")
    assert ModelConfig.from_preset("debug_tiny", layer_mixers=["none"] * 2).mixer_name == "none"
    with pytest.raises(pydantic.ValidationError, match="layer_mixers has 3 entries but n_layers"):
        ModelConfig.from_preset("debug_tiny", layer_mixers=["attention"] * 3)
    with pytest.raises(pydantic.ValidationError, match="layer_mixers"):
        ModelConfig.from_preset("debug_tiny", layer_mixers=["attention", "mamba"])


@pytest.mark.parametrize(("name", "nominal"), sorted(NOMINAL_PARAMS.items()))
def test_reference_presets_are_within_15_percent_of_nominal(name, nominal):
    count = ModelConfig.from_preset(name, vocab_size=32000).num_params()
    assert abs(count - nominal) / nominal < 0.15, f"{name}: {count / 1e6:.1f}M"


def test_small_cpu_is_5_to_20m_params():
    assert 5e6 <= ModelConfig.from_preset("small_cpu").num_params() <= 20e6
