"""Per-mixer tuned values live in the train presets (`tuned`), apply when a mixer is chosen, and
lose to values the user sets. Pinned structurally: the measured numbers are in docs/tuning.md."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import get_args

import pytest

from train_stage.cli import build_config, train_parser
from train_stage.config import TRAIN_PRESETS, TrainConfig, deep_merge
from ttt_core.config import Family

MIXERS = get_args(Family)  # the mixers, and e2e (swa with TTT-E2E suffix blocks)


def family_model(family: str) -> dict:
    """Model overrides that ask for `family`: its mixer, or swa with a suffix for e2e."""
    return {"mixer": "swa", "e2e_suffix_layers": 1} if family == "e2e" else {"mixer": family}


def tuned(preset: str, mixer: str) -> dict:
    return TRAIN_PRESETS[preset].get("tuned", {}).get(mixer, {})


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
def test_tuned_entries_name_mixers_and_give_valid_configs(preset):
    for mixer, values in TRAIN_PRESETS[preset].get("tuned", {}).items():
        assert mixer in MIXERS
        assert values, f"{preset}: empty tuned entry for {mixer}"
        assert "mixer" not in values.get("model", {}), "the mixer is the entry's key"
        cfg = TrainConfig.model_validate(
            {**TrainConfig.preset_dict(preset, mixer), "data": ".", "run_dir": "."}
        )
        assert cfg.model.mixer_name == mixer
        assert deep_merge(cfg.model_dump(mode="json"), values) == cfg.model_dump(mode="json")


def test_small_cpu_is_tuned_for_every_mixer():
    assert set(TRAIN_PRESETS["small_cpu"]["tuned"]) == set(MIXERS)
    assert all("lr" in tuned("small_cpu", m) for m in MIXERS)


def test_the_tuned_lr_applies_per_mixer_and_an_explicit_lr_wins(tmp_path: Path):
    common = ["--preset", "small_cpu", "--data", str(tmp_path), "--run-dir", str(tmp_path)]
    for mixer in MIXERS:
        flags = ["--mixer", "swa", "--model.e2e-suffix-layers", "1"] if mixer == "e2e" else []
        flags = flags or ["--mixer", mixer]
        cfg = build_config(train_parser().parse_args([*common, *flags]))
        assert (cfg.model.mixer_name, cfg.lr) == (mixer, tuned("small_cpu", mixer)["lr"])
        explicit = build_config(train_parser().parse_args([*common, *flags, "--lr", "0.0123"]))
        assert explicit.lr == 0.0123
    default = build_config(train_parser().parse_args(common))
    assert default.lr == tuned("small_cpu", default.model.mixer)["lr"]


def test_from_preset_applies_the_tuned_values_of_the_mixer_it_is_given(tmp_path: Path):
    paths = {"data": tmp_path, "run_dir": tmp_path}
    for mixer in MIXERS:
        model = family_model(mixer)
        cfg = TrainConfig.from_preset("small_cpu", model=model, **paths)
        assert cfg.lr == tuned("small_cpu", mixer)["lr"]
        assert TrainConfig.from_preset("small_cpu", model=model, lr=0.5, **paths).lr == 0.5


def test_the_e2e_inner_lr_warms_up_linearly_and_only_with_a_suffix(tmp_path: Path):
    paths = {"data": tmp_path, "run_dir": tmp_path, "steps": 100}
    cfg = TrainConfig.from_preset("small_cpu", model=family_model("e2e"), **paths)
    assert (cfg.e2e_inner_lr_warmup, cfg.e2e_inner_lr_init) == (0.1, 0.1)  # the reference's
    scales = [cfg.inner_lr_scale(step) for step in range(12)]
    assert scales[0] == pytest.approx(0.1 + 0.9 / 10) and scales[9:] == [1.0, 1.0, 1.0]
    assert all(a < b for a, b in itertools.pairwise(scales[:10]))
    plain = TrainConfig.from_preset("small_cpu", model={"mixer": "swa"}, **paths)
    assert plain.inner_lr_scale(0) == 1.0
    with pytest.raises(ValueError, match="e2e_inner_lr_init: TTT-E2E settings"):
        TrainConfig.from_preset("small_cpu", model={"mixer": "swa"}, e2e_inner_lr_init=0.5, **paths)
