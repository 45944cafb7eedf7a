"""The names a person picks (mixers, families, decode modes), importing no torch: command-line
parsers build their choices from these without loading the model modules."""

from __future__ import annotations

from typing import Literal

Mixer = Literal["ttt_linear", "lact", "attention", "swa", "none"]
# What a bring-up or control names: a mixer for every layer, or `e2e`, sliding-window attention
# whose top blocks carry TTT-E2E's prime MLPs (`config.family_settings`).
Family = Literal["ttt_linear", "lact", "attention", "swa", "none", "e2e"]
DecodeMode = Literal["online", "chunked"]
