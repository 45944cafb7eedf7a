"""What every stage CLI derived from a pydantic config must do (`stage_common.config_cli`), checked
against the config class itself: each field, nested ones dotted, is a flag that sets it, and the
help shows each field's description."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from stage_common.config_cli import ConfigFlags


def leaf_fields(cls: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    """Dotted path -> field for every field of `cls` that is not itself a config."""
    leaves: dict[str, FieldInfo] = {}
    for name, info in cls.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            leaves |= leaf_fields(kind, f"{prefix}{name}.")
        else:
            leaves[prefix + name] = info
    return leaves


def documented_flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _lookup(tree: dict[str, Any], path: str) -> bool:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _set_by(flags: ConfigFlags, flag: str, extra: list[str]) -> dict[str, Any]:
    """The overrides `flag` alone (with a value it accepts, and the command's required `extra`)
    produces. Values are not validated here: a string that parses for any field type."""
    action = flags.parser._option_string_actions[flag]
    samples = [[]] if action.nargs == 0 else [[action.choices[-1]]] if action.choices else None
    for value in samples or (["7"], ["8:2"]):  # "8:2" for --curriculum's SEQ:STEPS syntax
        try:
            return flags.overrides(flags.parser.parse_args([*extra, flag, *value]))
        except ValueError:
            continue
    raise AssertionError(f"{flag} accepts none of the sample values")


def assert_every_field_is_a_flag(flags: ConfigFlags, extra: list[str] = ()) -> None:
    """Each field of `flags.cls` has its documented flag, and giving it sets that field."""
    extra = list(extra)
    for path in leaf_fields(flags.cls):
        if path == "preset" and flags.presets is not None:
            args = flags.parser.parse_args([*extra, "--preset", sorted(flags.presets)[0]])
            assert flags.base(args)["preset"] == sorted(flags.presets)[0]
            continue
        flag = documented_flag(path)
        assert flag in flags.parser._option_string_actions, f"{flags.cls.__name__}: no {flag}"
        assert _lookup(_set_by(flags, flag, extra), path), f"{flag} does not set {path}"


def assert_help_describes_every_field(
    parser: argparse.ArgumentParser, cls: type[BaseModel]
) -> None:
    """Every field has a description and `--help` shows it (compared without line breaks)."""
    text = "".join(parser.format_help().split())
    for path, info in leaf_fields(cls).items():
        assert info.description, f"{cls.__name__}.{path} has no description"
        wanted = "".join(info.description.rstrip(".").split())
        assert wanted in text, f"--help lacks {path}'s description"
