"""Every eval eval_stage offers, in one table (`EVALS`), so no other place lists them.

Each eval has one name, spelled once, in its module (`position_loss.EVAL = "position-loss"`):
that spelling is the CLI subcommand and the `eval` field of its result JSON; `name` is the same
with `_` for `-` (`position_loss`): the key of `EVALS`, a flow's `evals` entry and config field,
the result's file stem and MLflow metric prefix (`eval_stem`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from . import bench, harness, latency, niah, perplexity, position_loss
from .config import (
    BenchConfig,
    LatencyConfig,
    LmEvalConfig,
    NiahConfig,
    PerplexityConfig,
    PositionLossConfig,
)
from .results import EvalResult, eval_stem


@dataclass(frozen=True)
class Eval:
    """One eval: `evaluate(model, config, baseline)` (`evaluate(config)` when not
    `needs_model`), its pydantic config, `summarize(result)` for a console, a one-line `help`,
    and the optional extras (`pip install -e .[...]`) it needs."""

    module: ModuleType
    config: type[BaseModel]
    evaluate: Callable[..., EvalResult]
    help: str
    needs_model: bool = True
    extras: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The CLI subcommand and the result's `eval` field (`position-loss`)."""
        return self.module.EVAL

    @property
    def name(self) -> str:
        """`command` as an identifier (`position_loss`): the key everywhere else."""
        return eval_stem(self.command)

    @property
    def reads_data(self) -> bool:
        """The config takes a shard directory (`data`)."""
        return "data" in self.config.model_fields

    def summarize(self, result: EvalResult) -> str:
        return self.module.summarize(result)


_ALL = (
    Eval(perplexity, PerplexityConfig, perplexity.evaluate_perplexity,
         "validation loss and perplexity"),
    Eval(position_loss, PositionLossConfig, position_loss.evaluate_position_loss,
         "loss by token index at 1x..4x the train length"),
    Eval(niah, NiahConfig, niah.evaluate_niah,
         "passkey retrieval accuracy by context length x depth"),
    Eval(latency, LatencyConfig, latency.evaluate_latency,
         "prefill tokens/s and decode ms/token vs context"),
    Eval(bench, BenchConfig, bench.evaluate_bench_dual_primal,
         "dual vs anchored primal vs online op timing", needs_model=False),
    Eval(harness, LmEvalConfig, harness.evaluate_lm_eval,
         "lm-evaluation-harness on local tasks (offline)", extras=("hf", "lm-eval")),
)  # fmt: skip
EVALS: dict[str, Eval] = {e.name: e for e in _ALL}

# The evals of a trained model that need nothing beyond the base install (what a bring-up runs).
STANDARD_EVALS: tuple[str, ...] = tuple(e.name for e in _ALL if e.needs_model and not e.extras)


def find_eval(name: str) -> Eval:
    """The eval called `name` in either spelling (`position_loss` or `position-loss`)."""
    try:
        return EVALS[eval_stem(name)]
    except KeyError:
        raise ValueError(f"unknown eval {name!r}; choose one of {sorted(EVALS)}") from None


def run_eval(name: str, model: Any, config: BaseModel, baseline: Any = None) -> EvalResult:
    """Run the model eval `name` on `model` (a `LoadedModel`; `baseline` alongside)."""
    spec = find_eval(name)
    if not spec.needs_model:
        raise ValueError(f"eval {name!r} measures ops, not a model; call its evaluate(config)")
    return spec.evaluate(model, config, baseline)
