"""Per-mixer tuned values live in the train presets (`tuned`), apply when a mixer is chosen, and
lose to values the user sets. Pinned structurally: the measured numbers are in docs/tuning.md."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from train_stage.cli import build_config, train_parser
from train_stage.config import TRAIN_PRESETS, TrainConfig, deep_merge
from ttt_core.config import Mixer

MIXERS = get_args(Mixer)


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
        assert cfg.model.mixer == mixer
        assert deep_merge(cfg.model_dump(mode="json"), values) == cfg.model_dump(mode="json")


def test_small_cpu_is_tuned_for_every_mixer():
    assert set(TRAIN_PRESETS["small_cpu"]["tuned"]) == set(MIXERS)
    assert all("lr" in tuned("small_cpu", m) for m in MIXERS)


def test_the_tuned_lr_applies_per_mixer_and_an_explicit_lr_wins(tmp_path: Path):
    common = ["--preset", "small_cpu", "--data", str(tmp_path), "--run-dir", str(tmp_path)]
    for mixer in MIXERS:
        cfg = build_config(train_parser().parse_args([*common, "--mixer", mixer]))
        assert (cfg.model.mixer, cfg.lr) == (mixer, tuned("small_cpu", mixer)["lr"])
        explicit = build_config(
            train_parser().parse_args([*common, "--mixer", mixer, "--lr", "0.0123"])
        )
        assert explicit.lr == 0.0123
    default = build_config(train_parser().parse_args(common))
    assert default.lr == tuned("small_cpu", default.model.mixer)["lr"]


def test_from_preset_applies_the_tuned_values_of_the_mixer_it_is_given(tmp_path: Path):
    paths = {"data": tmp_path, "run_dir": tmp_path}
    for mixer in MIXERS:
        cfg = TrainConfig.from_preset("small_cpu", model={"mixer": mixer}, **paths)
        assert cfg.lr == tuned("small_cpu", mixer)["lr"]
        assert (
            TrainConfig.from_preset("small_cpu", model={"mixer": mixer}, lr=0.5, **paths).lr == 0.5
        )
