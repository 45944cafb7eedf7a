"""Stage CLIs derived from pydantic configs: every field a flag, `--config FILE.yaml` under them.

One mechanism for every `python -m <stage>` command. pydantic-settings' CLI source
(`CliSettingsSource`, on our own argparse parser) turns a config class into flags: each field,
nested ones dotted (`--model.chunk-size`), `--x/--no-x` for booleans, lists as
`--contexts 256 512` (or `256,512`), `None` for None, the help from `Field(description=...)` and
the default. `ConfigFlags` adds what a stage needs around it:

- `--config FILE.yaml` (a config as `model_dump` writes it, whole or partial) and, where the config
  has named recipes, `--preset NAME`: the base that the flags given are merged over;
- `Alias`es: older spellings kept working (`--run-dir` needs none, `--mixer` sets `model.mixer`);
- `command(cfg)`: the flags that rebuild `cfg`, checked by parsing them back, so a recorded
  command is never a silently different config.

Flags accept `_` or `-` inside names (`--model.chunk_size` = `--model.chunk-size`). A usage error
is one line and exit 2; a missing required field is reported by its flag, like argparse's own.
A bad value is a pydantic `ValidationError`: `describe_refusal` makes it one line naming the field
(the caller runs the body under `stage_common.faults.run_cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Generic, Literal, NoReturn, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import CliSettingsSource, SettingsError

from stage_common.faults import EXIT_BAD_INPUT
from ttt_core.dotted import deep_merge
from ttt_core.validation import error_summary

C = TypeVar("C", bound=BaseModel)

NONE = "None"  # how a None value is spelled on the command line (pydantic-settings' choice)
_CONFIG_DEST, _PRESET_DEST = "config_file", "config_preset"


class ConfigFileError(ValueError):
    """`--config FILE` cannot be read or is not a YAML mapping (a refusal: exit 2)."""


def positive_int(text: str) -> int:
    """argparse `type=` for a count of at least 1 (scripts' hand-written flags)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def describe_refusal(error: BaseException) -> str:
    """A refusal in one line; a pydantic error names each field (`invalid config: lr: ...`)."""
    if isinstance(error, ValidationError):
        return f"invalid config: {error_summary(error)}"
    return str(error)


class CliParser(argparse.ArgumentParser):
    """argparse with the project's failure rule (a usage error: one line, exit 2) and `_` or `-`
    accepted inside flag names. A flag added again replaces the first (`conflict_handler`
    "resolve"): how an `Alias` or `--preset` takes over a derived flag's spelling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"conflict_handler": "resolve", **kwargs})
        self.subcommands: dict[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        action = super().add_subparsers(**kwargs)
        self.subcommands = action.choices  # name -> parser, filled as they are added
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args([_kebab_flag(a) for a in args], namespace)


def _kebab_flag(token: str) -> str:
    if not token.startswith("--"):
        return token
    name, sep, value = token.partition("=")
    return name.replace("_", "-") + sep + value


def flag_of(path: str) -> str:
    """The derived flag of a dotted field path: `model.chunk_size` -> `--model.chunk-size`."""
    return "--" + path.replace("_", "-")


@dataclass(frozen=True)
class Alias:
    """Another spelling of a field's flag. `kwargs` are argparse's (`nargs`, `type`, `choices`,
    or `action="store_const", const=False` for a `--no-x` switch); `convert` turns the value given
    into the field's (its ValueError is a refusal, raised when the config is built). When `flag`
    is also a derived flag (`--curriculum` in another syntax), the alias replaces it."""

    flag: str
    path: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    convert: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        return f"alias:{self.flag}"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_paths(cls: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted path, field) of every leaf field of `cls`, nested configs walked."""
    for name, info in cls.model_fields.items():
        if _is_model(info.annotation):
            yield from field_paths(info.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, info


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for parent in parents:
        tree = tree.setdefault(parent, {})
    tree[leaf] = value


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`; anything else is a one-line `ConfigFileError`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigFileError(f"--config {path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of config fields")
    return data


class ConfigFlags(Generic[C]):
    """The flags of config class `cls` on `parser` (a command or subcommand parser).

    `presets` maps a name to a function of the flags given (as a nested dict) returning its
    recipe as plain data, so a recipe may depend on what is asked, e.g. tuned per mixer (adds
    `--preset NAME`, exclusive with `--config`); `base_required`: one of the two must be given. `merge(base, overrides)` puts
    the flags given over the base (default `deep_merge`). The parser's defaults get
    `config_flags=self`, so `main` finds the config of the subcommand that was chosen."""

    def __init__(
        self,
        parser: CliParser,
        cls: type[C],
        *,
        aliases: Sequence[Alias] = (),
        presets: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
        base_required: bool = False,
        merge: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = deep_merge,
    ) -> None:
        self.parser, self.cls, self.aliases, self.presets = parser, cls, tuple(aliases), presets
        self.merge = merge
        before = set(parser._actions)
        self._source = CliSettingsSource(
            cls,
            root_parser=parser,
            cli_kebab_case=True,
            cli_implicit_flags=True,
            cli_avoid_json=True,
            cli_hide_none_type=True,
            cli_exit_on_error=True,
        )
        self._derived = [a for a in parser._actions if a not in before]
        defaults = {path: info for path, info in field_paths(cls)}
        for action in self._derived:
            if action.dest in defaults:  # argparse refuses a value outside a Literal's set
                action.choices = _choices(defaults[action.dest].annotation)
            if isinstance(action, argparse._AppendAction):
                action.nargs = "+"  # `--contexts 256 512` as well as `--contexts 256,512`
                action.metavar = _item_metavar(str(action.metavar))
            path = action.dest
            if action.help and "(default factory:" in action.help and path in defaults:
                default = defaults[path].get_default(call_default_factory=True)
                head = action.help.split("(default factory:")[0]
                action.help = f"{head}(default: {_show(default)})"
        source = parser.add_mutually_exclusive_group(required=base_required)
        source.add_argument(
            "--config",
            dest=_CONFIG_DEST,
            type=Path,
            metavar="FILE.yaml",
            help=f"a {cls.__name__} as YAML (whole or partial); flags given override it",
        )
        if presets is not None:
            field = cls.model_fields.get("preset")
            about = f" ({field.description})" if field is not None and field.description else ""
            source.add_argument(
                "--preset",
                dest=_PRESET_DEST,
                choices=sorted(presets),
                help=f"start from a named {cls.__name__} recipe{about}; flags given override it",
            )
        derived = {action.dest: action for action in self._derived}
        for alias in self.aliases:
            kwargs = dict(alias.kwargs)
            if "const" in kwargs:  # a switch: what it stands for says it all
                about = ["same as " + " ".join(_tokens(alias.path, kwargs["const"]))]
            else:
                kwargs.setdefault("metavar", derived[alias.path].metavar)
                same = f"same as {flag_of(alias.path)}" if alias.flag != flag_of(alias.path) else ""
                description = (defaults[alias.path].description or "").rstrip(".")
                about = [description, kwargs.pop("help", ""), same]
            help = "; ".join(part for part in about if part)
            parser.add_argument(alias.flag, dest=alias.dest, default=None, help=help, **kwargs)
        parser.set_defaults(config_flags=self)

    # --- parsing ---
    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        """The config fields the flags given set, as a nested dict (values not yet validated)."""
        live = {a.dest for a in self._derived if a in self.parser._actions}
        given: dict[str, Any] = {}
        for dest in live:
            if not hasattr(args, dest):
                continue
            value = getattr(args, dest)
            if isinstance(value, list) and value and isinstance(value[0], list):
                value = [item for group in value for item in group]  # nargs="+" appended
            given[dest] = value
        try:
            tree = dict(self._source(parsed_args=given)())  # type: ignore[call-overload]
        except SettingsError as e:  # a value it cannot parse (`--betas [0.1`): a usage error
            self.parser.error(str(e))
        for alias in self.aliases:
            value = getattr(args, alias.dest, None)
            if value is not None:
                _set(tree, alias.path, alias.convert(value) if alias.convert else value)
        return tree

    def base(self, args: argparse.Namespace) -> dict[str, Any]:
        """What `--config FILE` or `--preset NAME` holds; `{}` when neither was given."""
        if getattr(args, _CONFIG_DEST, None) is not None:
            return read_config_file(getattr(args, _CONFIG_DEST))
        name = getattr(args, _PRESET_DEST, None)
        if self.presets is None or name is None:
            return {}
        return self.presets[name](self.overrides(args))

    def config(self, args: argparse.Namespace) -> C:
        """The validated config: `base` with `overrides` merged over it; a missing required field
        is reported by its flag (exit 2, like argparse's own)."""
        data = self.merge(self.base(args), self.overrides(args))
        missing = _missing(self.cls, data)
        if missing:
            flags = ", ".join(map(flag_of, missing))
            self.parser.error(f"the following arguments are required: {flags}")
        return self.cls.model_validate(data)

    # --- rendering ---
    def command(self, cfg: C) -> list[str]:
        """The flags that rebuild `cfg` from the class defaults: its required fields and those
        that differ from their default. Raises ValueError if they would parse to another
        config."""
        argv: list[str] = []
        for path, info in field_paths(self.cls):
            value = _get(cfg, path)
            if info.is_required() or value != info.get_default(call_default_factory=True):
                argv += _tokens(path, value)
        rebuilt = ConfigFlags(CliParser(prog=self.parser.prog), self.cls)
        args = rebuilt.parser.parse_args(argv)
        if rebuilt.config(args) != cfg:
            raise ValueError(f"{self.cls.__name__} {cfg!r} does not survive its command line")
        return argv


def _missing(cls: type[BaseModel], data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the required fields absent from `data` (a nested config is walked when it
    is given or required itself)."""
    missing: list[str] = []
    for name, info in cls.model_fields.items():
        present = name in data
        if _is_model(info.annotation):
            sub = data.get(name, {})
            if (present or info.is_required()) and isinstance(sub, Mapping):
                missing += _missing(info.annotation, sub, f"{prefix}{name}.")
        elif info.is_required() and not present:
            missing.append(prefix + name)
    return missing


def _choices(annotation: Any) -> list[str] | None:
    """The spellings a field typed with Literals (also in a list, tuple or optional) accepts on
    the command line; None for any other type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return [str(arg) for arg in args]
    if origin in (list, tuple):
        return _choices(args[0]) if args else None
    if origin in (Union, UnionType):
        kinds = [_choices(arg) for arg in args if arg is not NoneType]
        if not kinds or any(kind is None for kind in kinds):
            return None
        optional = [NONE] if NoneType in args else []
        return [choice for kind in kinds for choice in kind] + optional  # type: ignore[union-attr]
    return None


def _item_metavar(metavar: str) -> str:
    """`list[int]` -> `int`, `tuple[float,float]` -> `float`, `tuple[{a,b},...]` -> `{a,b}`."""
    if "[" not in metavar:
        return metavar
    inner = metavar[metavar.index("[") + 1 : -1].removesuffix(",...")
    return inner if inner.startswith("{") else inner.split(",")[0]


def _get(cfg: BaseModel, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_show(v) for v in value) if value else "[]"
    return NONE if value is None else str(value)


def _tokens(path: str, value: Any) -> list[str]:
    """`--flag VALUE...` setting `path` to `value` as the derived flags parse it."""
    flag = flag_of(path)
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]]
    if isinstance(value, list | tuple):
        items = [json.dumps(v.model_dump(mode="json")) if isinstance(v, BaseModel) else _show(v)
                 for v in value]  # fmt: skip
        return [flag, *items] if items else [flag, "[]"]
    return [flag, _show(value)]


@dataclass(frozen=True)
class StageCommand:
    """A stage's command line, parsed without running it: the subcommand (or the module for a
    stage without any), its validated config (None for a command without one) and every flag."""

    name: str
    config: BaseModel | None
    args: argparse.Namespace


def subcommand_flags(parser: CliParser, name: str) -> ConfigFlags:
    """The `ConfigFlags` of subcommand `name` of `parser`."""
    return parser.subcommands[name].get_default("config_flags")


def parse_stage_command(parser: CliParser, argv: Sequence[str], module: str) -> StageCommand:
    """Parse `argv`, a command of `python -m module` (anything up to `-m module` is skipped, so
    a torchrun line parses too); usage errors exit 2 as the command would."""
    argv = list(argv)
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1 : i + 1] == ["-m", module]:
            argv = argv[i + 1 :]
            break
    args = parser.parse_args(argv)
    flags: ConfigFlags | None = getattr(args, "config_flags", None)
    config = flags.config(args) if flags is not None else None
    return StageCommand(getattr(args, "command", module), config, args)
