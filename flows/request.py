"""What a person asks for — a preset, a mixer, dotted overrides — turned into a `PipelineConfig`.

The `bringup` flow's parameters and `python -m flows run --preset … --set …` both resolve here,
so a deployment run and a CLI run of the same request build the same bring-up in the same run
dir. Where runs live (`run_root`) and the MLflow store belong to the process that runs the flow
(`flows up/deploy` options, or `flows run --run-root`), never to the request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

from pydantic import Field, ValidationError

from flows.choices import DEFAULT_PRESET, PresetName
from flows.config import PIPELINE_PRESETS, PipelineConfig
from flows.env import MLFLOW_URI_ENV, RUN_ROOT_ENV
from flows.fingerprint import digest
from train_stage import TrainConfig
from ttt_core import ConfigModel, Family, ModelConfig, error_summary, nest_dotted

assert set(get_args(PresetName)) == set(PIPELINE_PRESETS), "PresetName must list PIPELINE_PRESETS"

OWNED_BY_PROCESS = {
    "run_root": "--run-root of `flows up/deploy/run`",
    "mlflow_tracking_uri": "--mlflow-uri of `flows deploy/run` (`flows up` sets it)",
    "preset": "the `preset` parameter",
}
# Keys that change how a run is watched, retried or compared, not what it trains or measures:
# left out of the run name, so setting them continues the same run dir.
NAME_NEUTRAL = {
    "name",
    "baseline",
    "controls",
    "train_retries",
    "stop_grace_s",
    "max_restarts",
    "run_name",
}
NAME_NEUTRAL |= {f"train.{f}" for f in TrainConfig.OPERATIONAL_FIELDS}
NAME_NEUTRAL |= {f"train.model.{f}" for f in ModelConfig.OPERATIONAL_FIELDS}


class InvalidRequest(ValueError):
    """A request that names an unknown key or a bad value; the message is one line."""


class BringupRequest(ConfigModel):
    """The flow's parameters as recorded in `bringup.json` (what `resume` runs again)."""

    preset: PresetName = DEFAULT_PRESET
    mixer: Family | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


def run_name(request: BringupRequest, mixer: str) -> str:
    """`<preset>-<mixer>`, plus `-<8 hex>` of the overrides that change what is trained or
    measured: two different bring-ups never share a run dir, while watching/retry settings
    (`NAME_NEUTRAL`) continue the same one."""
    named = {k: v for k, v in request.overrides.items() if k not in NAME_NEUTRAL}
    base = f"{request.preset}-{mixer}"
    return f"{base}-{digest(named)[:8]}" if named else base


def resolve(
    request: BringupRequest, run_root: Path | str, mlflow_tracking_uri: str | None = None
) -> PipelineConfig:
    """The bring-up `request` asks for under `run_root`. Raises `InvalidRequest` (one line naming
    the key) for an unknown key, a bad value, or a key the running process owns."""
    flat = dict(request.overrides)
    for key in flat:
        root = key.split(".")[0]
        if root in OWNED_BY_PROCESS:
            raise InvalidRequest(
                f"override {key!r}: not a request setting; use {OWNED_BY_PROCESS[root]}"
            )
    mixer = flat.pop("mixer", None)
    if mixer is not None and request.mixer is not None and mixer != request.mixer:
        raise InvalidRequest(f"override 'mixer'={mixer!r} contradicts mixer={request.mixer!r}")
    mixer = request.mixer or mixer or PipelineConfig.model_fields["mixer"].default
    try:
        settings = nest_dotted(flat)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    settings.setdefault("run_name", run_name(request.model_copy(update={"overrides": flat}), mixer))
    settings.update(mixer=mixer, run_root=str(run_root))
    if mlflow_tracking_uri:
        settings["mlflow_tracking_uri"] = mlflow_tracking_uri
    try:
        return PipelineConfig.from_preset(request.preset, **settings)
    except ValidationError as e:
        raise InvalidRequest(f"overrides: {error_summary(e, list(flat))}") from None
    except ValueError as e:
        raise InvalidRequest(f"overrides: {' '.join(str(e).split())}") from None


def served_location() -> tuple[Path, str | None]:
    """(run_root, MLflow tracking URI or None for the run root's SQLite store) of this process:
    `FLOWS_RUN_ROOT` / `FLOWS_MLFLOW_TRACKING_URI`, which `flows up/deploy/run` set; `./runs`
    when unset."""
    return Path(os.environ.get(RUN_ROOT_ENV, "runs")), os.environ.get(MLFLOW_URI_ENV) or None
