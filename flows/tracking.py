"""The MLflow layout of a bring-up: one experiment per pipeline name, one parent run per flow
run, one nested child run per stage. Explicit run ids through `MlflowClient`, no active run."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from flows.config import PipelineConfig
from flows.env import UI_ENV
from flows.headline import identity
from flows.links import run_page_url
from train_stage import log_params, mlflow_params

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run page's description (Markdown)
# MLflow 3 opens an experiment on its GenAI page unless it is marked as model training
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str, run_root: Path) -> str:
    """The id of experiment `name`, created when missing, marked as model training. A local
    store keeps artifacts in `<run_root>/mlartifacts`; a server decides (--artifacts-destination)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        uri = client.tracking_uri
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        location = (run_root / "mlartifacts").as_uri() if local else None
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    if found is None or found.tags.get(KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment_id, KIND_TAG, TRAINING_KIND)
    return experiment_id


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class Tracking:
    """MLflow runs of one bring-up under `cfg.name` at `cfg.mlflow_tracking_uri`."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.uri = str(cfg.mlflow_tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.name, cfg.run_root)

    def start_parent(self, flow_run_id: str | None, flow_run_url: str | None) -> str:
        """The bring-up's run: identity params only (`headline.identity`); paths, ids and the
        commit are tags, the whole resolved config an artifact (`pipeline_config.json`)."""
        tags = {"run_dir": str(self.cfg.run_dir), "pipeline.preset": str(self.cfg.preset)}
        for key, value in (
            ("prefect.flow_run_id", flow_run_id),
            ("prefect.flow_run_url", flow_run_url),
            ("git.commit", git_commit()),
        ):
            if value:
                tags[key] = value
        run = self.client.create_run(self.experiment_id, run_name=self.cfg.run_name, tags=tags)
        self.log_params(run.info.run_id, identity(self.cfg))
        self.client.log_dict(
            run.info.run_id, self.cfg.model_dump(mode="json"), "pipeline_config.json"
        )
        return run.info.run_id

    def start_child(self, parent_id: str, stage: str, params: dict[str, Any]) -> str:
        """`<run_name>/<stage>` with the stage's settings as params and its paths as tags
        (`path.<key>`), so a compare view never plots paths."""
        flat = mlflow_params(params)
        paths = {k: v for k, v in flat.items() if v.startswith("/") or "'/" in v}
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.cfg.run_name}/{stage}",
            tags={
                PARENT_TAG: parent_id,
                "stage": stage,
                **{f"path.{k}": v for k, v in paths.items()},
            },
        )
        self.log_params(run.info.run_id, {k: v for k, v in flat.items() if k not in paths})
        return run.info.run_id

    def adopt(self, run_id: str, parent_id: str) -> None:
        """Nest an existing run (train_stage's, resumed from an earlier flow run) under this
        flow run's parent, so the latest parent always holds every stage."""
        if self.client.get_run(run_id).data.tags.get(PARENT_TAG) != parent_id:
            self.client.set_tag(run_id, PARENT_TAG, parent_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        log_params(self.client, run_id, params)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_dir(self, run_id: str, directory: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(directory), artifact_path=artifact_path)

    def close_abandoned(self, parent_id: str, note: str) -> list[str]:
        """Mark FAILED the runs a killed flow run left RUNNING: `parent_id` and its children.
        Returns their ids."""
        query = f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'"
        children = self.client.search_runs([self.experiment_id], filter_string=query)
        parent = self.client.get_run(parent_id)
        runs = [r for r in [parent, *children] if r.info.status == "RUNNING"]
        for run in runs:
            self.client.set_tag(run.info.run_id, "abandoned", note)
            self.client.set_terminated(run.info.run_id, status="FAILED")
        return [r.info.run_id for r in runs]

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_url(self, run_id: str) -> str | None:
        """The UI address of a run: on the tracking server, or on the UI `flows up` serves for
        the local store (`FLOWS_MLFLOW_UI`); None when there is neither."""
        ui = self.uri if self.uri.startswith(("http://", "https://")) else os.environ.get(UI_ENV)
        return run_page_url(ui, self.experiment_id, run_id) if ui else None


@contextmanager
def system_metrics(run_id_file: Path, tracking_uri: str, interval_s: float = 5.0) -> Iterator[None]:
    """MLflow system metrics of this machine (CPU, memory, disk, network; GPU when visible)
    logged into the run whose id appears in `run_id_file` — train_stage writes it when its run
    starts — from here, since train_stage uses the client API and cannot start them itself."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    stop = threading.Event()
    started: list[SystemMetricsMonitor] = []

    def attach() -> None:
        while not stop.is_set():
            run_id = run_id_file.read_text().strip() if run_id_file.is_file() else ""
            if run_id:
                monitor = SystemMetricsMonitor(
                    run_id, sampling_interval=interval_s, resume_logging=True,
                    tracking_uri=tracking_uri,
                )  # fmt: skip
                monitor.start()
                started.append(monitor)
                return
            stop.wait(0.5)

    watcher = threading.Thread(target=attach, daemon=True, name="system-metrics-attach")
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        for monitor in started:
            monitor.finish()
