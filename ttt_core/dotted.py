"""Dotted keys and nested dicts: one rule for every config override in the project.

`{"train.steps": 10}` (a flow's `overrides`, `flows run --set train.steps=10`, a stage flag that
sets `model.vocab_size`) nests to `{"train": {"steps": 10}}`, which `deep_merge` lays over a
preset; `flatten_dotted` is the inverse (MLflow params, identity differences). Imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """`["train.steps=10", "evals=[perplexity]"]` -> `{"train.steps": 10, "evals": [...]}`;
    values are parsed as YAML. ValueError naming the item when it is not `KEY=VALUE`."""
    flat: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE (e.g. train.steps=10)")
        flat[key] = yaml.safe_load(text)
    return flat


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"train.steps": 5, "niah.trials": 1}` -> `{"train": {"steps": 5}, "niah": {"trials": 1}}`.
    ValueError (naming the key) for an empty part (`a..b`) or a key set twice, including one
    that is both a value and a parent (`train=…` and `train.steps=…`)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        if not all([*parents, leaf]):
            raise ValueError(f"override {key!r}: empty part in a dotted key")
        target = nested
        for depth, parent in enumerate(parents):
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {'.'.join(parents[: depth + 1])!r} set twice")
        if leaf in target:
            raise ValueError(f"override {key!r} set twice")
        target[leaf] = value
    return nested


def flatten_dotted(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of `nest_dotted`: nested mappings as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for name, value in nested.items():
        if isinstance(value, Mapping):
            flat.update(flatten_dotted(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; nested dicts are merged key by key (neither is changed)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
