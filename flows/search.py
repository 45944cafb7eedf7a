"""What a sweep searches and how: its space (`--grid` values, `--range` bounds), the Optuna sampler
(grid or TPE) and pruner (median, fed by the trainer's periodic val losses), and the study that
records every trial, stored beside the points so an interrupted sweep continues."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.fingerprint import digest

STUDY_FILE = "optuna.db"
TIME_BOX_KEYS = ("train.stop_at",)  # stop every point early; a rerun without it continues
PRUNER_STARTUP_TRIALS = 2  # the median pruner compares with at least this many finished trials


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message is one line naming the key."""


class Range(BaseModel):
    """A numeric axis for TPE: `low..high`, optionally sampled on a log scale or as integers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"needs finite low < high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"an int range needs whole bounds, got {self.low}..{self.high}")
        return self

    def bounds(self) -> list[float | int]:
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["train.lr=1e-3,3e-3"]` -> `{"train.lr": ["1e-3", "3e-3"]}`; each value parsed as YAML."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-3,3e-3)")
        if key in axes:
            raise SweepError(f"--grid {key!r} given twice")
        try:
            values = [yaml.safe_load(v) for v in text.split(",")]
        except yaml.YAMLError as e:
            raise SweepError(f"--grid {item!r}: {' '.join(str(e).split())}") from None
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"--grid {key!r}: repeated values {values}")
        axes[key] = values
    return axes


def parse_range(text: str) -> Range:
    """`"1e-4..1e-2:log"`, `"1..8:int"`, `"0.1..0.9"` -> a Range (ValueError, one line)."""
    bounds, *flags = text.split(":")
    low, sep, high = bounds.partition("..")
    unknown = set(flags) - {"log", "int"}
    if not sep or unknown:
        raise ValueError(f"expected LOW..HIGH[:log][:int], got {text!r}")
    try:
        return Range(low=float(low), high=float(high), log="log" in flags, integer="int" in flags)
    except ValueError as e:
        raise ValueError(" ".join(str(e).split()).split(" [type=")[0]) from None


def parse_ranges(items: list[str] | dict[str, str]) -> dict[str, Range]:
    """`["train.lr=1e-4..1e-2:log"]` (the CLI's) or `{"train.lr": "1e-4..1e-2:log"}` (the
    flow's) -> `{"train.lr": Range(...)}`; SweepError names the axis."""
    pairs = list(items.items()) if isinstance(items, dict) else []
    for item in items if isinstance(items, list) else []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--range {item!r}: expected KEY=LOW..HIGH[:log][:int]")
        if key in dict(pairs):
            raise SweepError(f"--range {key!r} given twice")
        pairs.append((key, text))
    axes: dict[str, Range] = {}
    for key, text in pairs:
        try:
            axes[key] = parse_range(text)
        except ValueError as e:
            raise SweepError(f"range {key!r}: {e}") from None
    return axes


def _grid_sampler_class():
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its `Study.stop()` after the last grid point, which
        raises outside `optimize()` (optuna/optuna#5141); the trial loop counts the grid itself."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGridSampler


class SearchSpec(BaseModel):
    """Everything that decides a sweep's trials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str
    mixer: str | None = None
    sets: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    ranges: dict[str, Range] = Field(default_factory=dict)
    sampler: Literal["grid", "tpe"] = "grid"
    trials: int | None = Field(default=None, ge=1)
    pruner: Literal["median", "none"] = "median"
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        keys = [*self.grid, *self.ranges]
        if not keys:
            raise ValueError("give at least one --grid KEY=V1,V2,... or --range KEY=LOW..HIGH")
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"{key!r} is both a --grid and a --range axis")
            if key in self.sets:
                raise ValueError(f"{key!r} is both a searched axis and a --set")
            if key == "mixer" or not key.startswith("train."):
                raise ValueError(
                    f"axis {key!r}: only train.* keys can be swept (the tokenizer and shards are "
                    "shared by every point; run another sweep for another data setting or mixer)"
                )
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"--grid {key!r} has no values")
        if self.sampler == "grid":
            if self.ranges:
                raise ValueError(f"--range {next(iter(self.ranges))!r} needs --sampler tpe")
            if self.trials is not None:
                raise ValueError("--trials is for --sampler tpe; the grid runs every point once")
        elif self.trials is None:
            raise ValueError("--sampler tpe needs --trials N")
        return self

    def study_name(self) -> str:
        """`sweep-<digest>` of everything but `trials` and the `--set` keys that only time-box
        the points (`TIME_BOX_KEYS`): the same search, continued."""
        identity = self.model_dump(mode="json", exclude={"trials"})
        identity["sets"] = {k: v for k, v in self.sets.items() if k not in TIME_BOX_KEYS}
        return "sweep-" + digest("study", identity)[:12]

    def target(self) -> int:
        """How many trials the sweep runs: every grid point, or TPE's `trials`."""
        return math.prod(map(len, self.grid.values())) if self.trials is None else self.trials

    def axes(self) -> dict[str, list[Any]]:
        """Each axis's values (a grid's) or bounds (a range's), in the order given."""
        return {**self.grid, **{k: r.bounds() for k, r in self.ranges.items()}}

    def probe_params(self) -> list[dict[str, Any]]:
        """Points that must resolve before any work: the whole grid; for ranges, each bound of
        each range with every other axis at its first value or low bound."""
        if not self.ranges:
            return [
                dict(zip(self.grid, v, strict=True)) for v in itertools.product(*self.grid.values())
            ]
        first = {k: v[0] for k, v in self.axes().items()}
        probes = [first]
        for key, values in self.axes().items():
            probes += [{**first, key: v} for v in values[1:]]
        return probes

    def distributions(self) -> dict[str, Any]:
        import optuna.distributions as d

        out: dict[str, Any] = {k: d.CategoricalDistribution(v) for k, v in self.grid.items()}
        for key, r in self.ranges.items():
            out[key] = (
                d.IntDistribution(int(r.low), int(r.high), log=r.log)
                if r.integer
                else d.FloatDistribution(r.low, r.high, log=r.log)
            )
        return out

    def open_study(self, out: Path):
        """The study `study_name()` in `<out>/optuna.db`, created or loaded (an interrupted or
        extended sweep continues it), with this spec's sampler and pruner."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep logs its own lines
        AskTellGridSampler = _grid_sampler_class()
        if self.sampler == "grid":
            sampler: optuna.samplers.BaseSampler = AskTellGridSampler(self.grid, seed=self.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=self.seed)
        pruner: optuna.pruners.BasePruner = (
            optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)
            if self.pruner == "median"
            else optuna.pruners.NopPruner()
        )
        return optuna.create_study(
            study_name=self.study_name(),
            storage=f"sqlite:///{out / STUDY_FILE}",
            sampler=sampler,
            pruner=pruner,
            direction="minimize",
            load_if_exists=True,
        )
