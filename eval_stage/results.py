"""`EvalResult`: the documented JSON every eval writes (schema in `docs/eval_stage.md`).

One file per eval run, `<out>/<eval>.json`. `metrics` holds the flat scalars that are also
logged to MLflow (keys `<eval>/<role>/<name>`); `tables` holds the rows behind them and behind
the plots (each eval module defines and validates its own row model).
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttt_core.files import atomic_write_text

SCHEMA_VERSION = 2  # 2: intervals and NIAH chance/credit (docs/eval_stage.md)
EvalName = Literal[
    "perplexity", "position-loss", "niah", "latency", "bench-dual-primal", "lm-eval", "compare"
]
Role = Literal["model", "baseline"]


def created_by() -> str:
    """`eval_stage <distribution version>`, the producer recorded in every result."""
    return f"eval_stage {importlib.metadata.version('ttt-bringup')}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DeviceInfo(BaseModel):
    """Where the numbers were measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["cpu", "cuda"]
    name: str = Field(description="CPU model or CUDA device name")
    threads: int = Field(description="torch intra-op threads")
    torch_version: str
    allocator: str = Field(
        default="not recorded", description="what `stage_common.allocator` did to malloc"
    )


class ModelInfo(BaseModel):
    """Which model a row of numbers belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    source: str = Field(description="export dir, checkpoint dir, or preset:<name> (random init)")
    run_dir: str | None = None
    mlflow_run_id: str | None = Field(None, description="the training run's id, when recorded")
    step: int | None = None
    tokens_seen: int | None = None
    train_tokens_per_s: float | None = Field(
        None, description="training throughput the trainer logged (median over logged steps)"
    )
    mixer: str
    num_params: int
    config: dict[str, Any] = Field(description="the ModelConfig")


class EvalResult(BaseModel):
    """One eval run. `plots` are PNG file names next to the JSON (filled when published)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    schema_version: int = SCHEMA_VERSION
    eval: EvalName
    created_by: str = Field(default_factory=created_by)
    created_at: str = Field(default_factory=utc_now)
    device: DeviceInfo
    models: list[ModelInfo] = Field(default_factory=list)
    config: dict[str, Any] = Field(description="the eval's pydantic config, JSON mode")
    metrics: dict[str, float]
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list, description="how numbers were made")
    plots: list[str] = Field(default_factory=list)

    @property
    def stem(self) -> str:
        """File stem of this result's JSON and plot: `position-loss` -> `position_loss`."""
        return eval_stem(self.eval)

    def role_info(self, role: Role) -> ModelInfo | None:
        return next((m for m in self.models if m.role == role), None)


def eval_stem(eval_name: str) -> str:
    """An eval's name as an identifier: `position-loss` -> `position_loss` (file stems, MLflow
    metric prefixes, `EVALS` keys, a flow's config fields)."""
    return eval_name.replace("-", "_")


def metric_key(eval_name: str, *parts: object) -> str:
    """`<eval>/<part>/...` with the eval's `-` as `_` (MLflow accepts `/`, `_`, `.`, `-`)."""
    return "/".join([eval_stem(eval_name), *map(str, parts)])


def result_file(out_dir: Path | str, eval_name: str) -> Path:
    """Where `publish` writes the result JSON of eval `eval_name` (either spelling)."""
    return Path(out_dir) / f"{eval_stem(eval_name)}.json"


class EvalOutputs:
    """The result files of some evals in `out_dir` (`publish`'s output), and whether all of
    them are there."""

    def __init__(self, out_dir: Path | str, evals: list[str] | tuple[str, ...]):
        self.dir, self.evals = Path(out_dir), tuple(evals)

    @property
    def files(self) -> list[Path]:
        """`<out_dir>/<stem>.json` of each eval (plots, where an eval draws one, are listed in
        the JSON's `plots`)."""
        return [result_file(self.dir, name) for name in self.evals]

    def complete(self) -> bool:
        return all(path.is_file() for path in self.files)


def write_json(result: EvalResult, path: Path) -> None:
    """Write `result` to `path` atomically (a temp file renamed over it)."""
    atomic_write_text(path, result.model_dump_json(indent=2) + "\n")


def read_result(path: Path | str) -> EvalResult:
    return EvalResult.model_validate_json(Path(path).read_text())


def unique_labels(mixers: list[str], sources: list[str]) -> list[str]:
    """A name per model: its mixer; models of one mixer are told apart by their folder names
    (`ttt_linear (seed1)`), then by their position in the list (`ttt_linear #2`)."""
    names = list(mixers)
    for label in (lambda i: f"{mixers[i]} ({Path(sources[i]).name})",
                  lambda i: f"{mixers[i]} #{i + 1}"):  # fmt: skip
        names = [label(i) if names.count(name) > 1 else name for i, name in enumerate(names)]
    return names


def text_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned plain-text table (floats to 4 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
