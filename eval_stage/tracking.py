"""MLflow logging of a result into an existing run (never started or ended here).

The run id comes from the caller (`--mlflow-run-id`) or `MLFLOW_RUN_ID`; the tracking URI from
`--mlflow-tracking-uri` or `MLFLOW_TRACKING_URI` (else MLflow's default). Metrics go in one
`log_batch` at step = the model's training step (0 when unknown); the JSON and PNGs go under
the artifact folder `eval/<eval>/`. Any MLflow failure is logged as a warning and returns False:
the files on disk are the result.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ttt_core.telemetry import telemetry_off
from ttt_core.validation import ConfigModel

from .results import EvalResult

log = logging.getLogger(__name__)


class TrackingConfig(ConfigModel):
    run_id: str | None = None
    tracking_uri: str | None = None

    @classmethod
    def from_env(cls, run_id: str | None = None, tracking_uri: str | None = None) -> TrackingConfig:
        """Explicit values first, then `MLFLOW_RUN_ID` / `MLFLOW_TRACKING_URI`."""
        return cls(
            run_id=run_id or os.environ.get("MLFLOW_RUN_ID") or None,
            tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None,
        )


def _step(result: EvalResult) -> int:
    model = result.role_info("model")
    return model.step if model is not None and model.step is not None else 0


def log_result(result: EvalResult, files: list[Path], tracking: TrackingConfig) -> bool:
    """Log `result.metrics` and `files` to `tracking.run_id`; True on success."""
    return log_metrics_and_files(
        result.metrics, files, tracking, step=_step(result), artifact_path=f"eval/{result.stem}"
    )


def log_metrics_and_files(
    metrics: dict[str, float],
    files: list[Path],
    tracking: TrackingConfig,
    *,
    step: int,
    artifact_path: str,
) -> bool:
    """`metrics` in one `log_batch` at `step` and `files` under `artifact_path` of
    `tracking.run_id`; True on success, a warning and False on any MLflow failure."""
    if tracking.run_id is None:
        raise ValueError("log_result needs a run id (TrackingConfig.run_id or MLFLOW_RUN_ID)")
    telemetry_off()  # before MLflow loads
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri=tracking.tracking_uri)
        now = int(time.time() * 1000)
        client.log_batch(
            tracking.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()]
        )
        for path in files:
            client.log_artifact(tracking.run_id, str(path), artifact_path=artifact_path)
    except Exception as e:  # MLflow is a copy of the result; never lose the result over it
        log.warning(
            "MLflow logging to run %s failed (%s: %s); the results are on disk: %s",
            tracking.run_id,
            type(e).__name__,
            e,
            ", ".join(map(str, files)),
        )
        return False
    return True
