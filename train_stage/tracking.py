"""Run records: `metrics.jsonl` in the run directory (always) and MLflow (rank 0, optional).

MLflow is best effort: any failure is a warning and the metrics stay buffered for the next
flush; training never stops because the tracking server is away.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from stage_common.faults import NoSpaceError, is_no_space
from ttt_core.dotted import flatten_dotted
from ttt_core.files import atomic_write_bytes, atomic_write_text
from ttt_core.telemetry import telemetry_off

from .config import TrainConfig
from .outputs import METRICS_FILE, RUN_ID_FILE

# MLflow's HTTP client retries for minutes by default; a training step must not wait that long.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
RETRY_AFTER_SECONDS = 60.0
MAX_BUFFERED = 100_000
PARAM_BATCH, PARAM_VALUE_CHARS = 100, 6000  # MLflow's limits per log_batch / per param value


def prepare_mlflow_env() -> None:
    """Before MLflow loads: telemetry off and short HTTP retries, unless the user set them."""
    telemetry_off()
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def mlflow_params(params: dict[str, Any]) -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, string values cut to MLflow's limit."""
    return {key: str(value)[:PARAM_VALUE_CHARS] for key, value in flatten_dotted(params).items()}


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log `params` (nested or dotted) to run `run_id` through the `MlflowClient` `client`, in
    batches of MLflow's size. Params the run already has are skipped: MLflow refuses to change
    a param, and a resumed run logs the same ones again."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in sorted(mlflow_params(params).items()) if k not in existing]
    for start in range(0, len(new), PARAM_BATCH):
        client.log_batch(run_id, params=new[start : start + PARAM_BATCH])


def default_tracking_uri(run_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the run root (the run dir's parent)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve().parent}/mlflow.db"
    )


class MetricsFile:
    """Append-only JSON lines, one object per logged step; truncated to a checkpoint on resume
    so the file always tells one consistent history. A last line cut short by a kill mid-write
    is dropped (with a message) when the run resumes; a damaged line before it is refused."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE

    def _records(self) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        """([(line, record)] of the whole lines, a note when a partial last line is dropped).
        ValueError naming the line when a line before the last is not a JSON object."""
        if not self.path.exists():
            return [], None
        raw = self.path.read_bytes()
        lines = raw.decode("utf-8", errors="replace").split("\n")
        tail = lines.pop()  # text after the last newline: a write that never finished
        records, note = [], None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                if number < len(lines) or tail.strip():
                    raise ValueError(
                        f"{self.path}: line {number} is not a JSON object (damaged); "
                        "fix or delete that line, then resume"
                    )
                tail = line  # the last line ends in a newline but is cut short
                continue
            records.append((line, record))
        if tail.strip():
            note = (
                f"{self.path}: dropping a partial last line ({len(tail.encode())} bytes, "
                "from a write that was interrupted)"
            )
        return records, note

    def check(self) -> str | None:
        """Read-only check before a run starts: the note `truncate_after` will act on, if any."""
        return self._records()[1]

    def truncate_after(self, step: int) -> None:
        """Keep the records of steps <= `step` (and drop a partial last line), atomically."""
        if not self.path.exists():
            return
        records, _ = self._records()
        kept = "".join(line + "\n" for line, record in records if record.get("step", -1) <= step)
        atomic_write_bytes(self.path, kept.encode())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
        except OSError as e:
            if is_no_space(e):
                hint = "the latest checkpoint is intact; free space and rerun with --resume auto"
                raise NoSpaceError(self.path, len(line.encode()), hint) from e
            raise


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class MlflowTracker:
    """One MLflow run per run directory; a resumed run logs into the same run."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        prepare_mlflow_env()
        from mlflow import MlflowClient

        self.cfg = cfg.mlflow
        self.uri = self.cfg.tracking_uri or default_tracking_uri(run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.buffer: list[Any] = []
        self.retry_at = 0.0  # after a failure, sends wait until then (metrics stay buffered)
        self.run_id = self._run_id(run_dir)
        log_params(self.client, self.run_id, cfg.model_dump(mode="json"))

    def _run_id(self, run_dir: Path) -> str:
        id_file = run_dir / RUN_ID_FILE
        if id_file.exists():
            run_id = id_file.read_text().strip()
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if experiment is None:
            artifacts = (run_dir.resolve().parent / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(self.cfg.experiment, artifacts)
        else:
            experiment_id = experiment.experiment_id
        tags = {"run_dir": str(run_dir.resolve())}
        if self.cfg.parent_run_id:
            tags["mlflow.parentRunId"] = self.cfg.parent_run_id
        run = self.client.create_run(
            experiment_id, run_name=self.cfg.run_name or run_dir.name, tags=tags
        )
        atomic_write_text(id_file, run.info.run_id + "\n")
        return run.info.run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        del self.buffer[:-MAX_BUFFERED]
        if step % self.cfg.flush_every == 0:
            self.flush()

    def set_tag(self, key: str, value: str) -> None:
        self._safely(lambda: self.client.set_tag(self.run_id, key, value))

    def flush(self) -> None:
        def send() -> None:
            while self.buffer:
                self.client.log_batch(self.run_id, metrics=self.buffer[:1000])
                del self.buffer[:1000]

        self._safely(send)

    def finish(self, status: str) -> None:
        self.retry_at = 0.0  # one last try for whatever is still buffered
        self.flush()
        self._safely(lambda: self.client.set_terminated(self.run_id, status=status))

    def _safely(self, action) -> None:
        try:
            action()
        except Exception as e:
            warnings.warn(f"MLflow ({self.uri}) failed, training goes on: {e}", stacklevel=2)
            print(f"[warn] MLflow unavailable: {type(e).__name__}: {e}", file=sys.stderr)
