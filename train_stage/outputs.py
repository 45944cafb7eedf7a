"""What a training run leaves in its run directory, as an object that knows its files and
whether the run is complete; the flow asks it instead of reading file names itself.

A run dir holds `config.yaml` (the resolved `TrainConfig`, written before the first step),
`metrics.jsonl`, `checkpoints/` (`step_N/` + `latest`), `mlflow_run_id` (when tracked) and, once
a run ends or stops, `train_summary.json` (status, steps, losses, the checkpoint it ended on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train_summary.json"
RUN_ID_FILE = "mlflow_run_id"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


class TrainOutputs:
    """The outputs of `python -m train_stage` in `run_dir`."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)
        self.config_file = self.dir / CONFIG_FILE
        self.summary_file = self.dir / SUMMARY_FILE
        self.metrics_file = self.dir / METRICS_FILE
        self.checkpoints_dir = self.dir / CHECKPOINTS
        # written when the run's MLflow run starts (before the first step)
        self.mlflow_run_id_file = self.dir / RUN_ID_FILE

    @property
    def files(self) -> list[Path]:
        """config.yaml, train_summary.json, metrics.jsonl, checkpoints/ (and mlflow_run_id when
        the run is tracked)."""
        files = [self.config_file, self.summary_file, self.metrics_file, self.checkpoints_dir]
        return [*files, self.mlflow_run_id_file] if self.mlflow_run_id_file.exists() else files

    def summary(self) -> dict[str, Any]:
        """The parsed `train_summary.json` (OSError when missing, ValueError when not JSON)."""
        summary = json.loads(self.summary_file.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"{self.summary_file}: not a JSON object")
        return summary

    def complete(self) -> bool:
        """The summary says `completed` and the checkpoint it names still exists."""
        try:
            summary = self.summary()
        except (OSError, ValueError):
            return False
        checkpoint = summary.get("checkpoint")
        return (
            summary.get("status") == "completed" and bool(checkpoint) and Path(checkpoint).is_dir()
        )

    def mlflow_run_id(self) -> str | None:
        """The id of the run's MLflow run, None when it was not tracked."""
        file = self.mlflow_run_id_file
        return (file.read_text().strip() or None) if file.is_file() else None
