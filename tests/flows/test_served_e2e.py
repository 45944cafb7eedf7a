"""End to end through a real Prefect server: `flows serve` + `prefect deployment run --watch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.config import PipelineConfig
from flows.up import free_port, services


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Prefect server on a free port and `flows serve`, stopped by process group afterwards.
    Its database is its own (`<tmp_path>/.prefect`), not the session's Prefect home."""
    monkeypatch.delenv("PREFECT_HOME")
    prefect_port = free_port()
    server, _mlflow, serve = services(tmp_path, prefect_port, free_port(), 3600, True)
    started = []
    try:
        server.start(tmp_path / "logs")
        started.append(server)
        server.wait_healthy(120)
        serve.start(tmp_path / "logs")
        started.append(serve)
        yield tmp_path, serve.env
    finally:
        for service in reversed(started):
            service.stop()
        for service in started:  # the whole group is gone, not just the leader
            with pytest.raises(ProcessLookupError):
                os.killpg(service.proc.pid, 0)


@pytest.mark.slow
def test_deployment_run_completes_with_the_mlflow_layout(served):
    run_root, env = served
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=run_root)
    command = [
        sys.executable, "-m", "prefect", "deployment", "run", "bringup/bringup",
        "--param", f"config={cfg.model_dump_json()}", "--watch", "--watch-timeout", "240",
    ]  # fmt: skip
    for _ in range(60):  # `flows serve` registers the deployment a few seconds after it starts
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if "not found" not in done.stdout + done.stderr:
            break
        subprocess.run(["sleep", "2"], check=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Completed" in done.stdout

    client = MlflowClient(str(cfg.mlflow_tracking_uri))
    experiment = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.tags["prefect.flow_run_url"].startswith("http://127.0.0.1:")
    children = {r.info.run_name.split("/")[-1]: r for r in runs if r is not parent}
    assert set(children) == {"tokenizer", "shards", "train", "bench", "evaluate"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    history = client.get_metric_history(children["train"].info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 21))
    assert children["shards"].data.metrics["train_rows"] > 0

    def artifacts(stage: str, path: str = "") -> set[str]:
        return {a.path for a in client.list_artifacts(children[stage].info.run_id, path)}

    assert "tokenizer/tokenizer.model" in artifacts("tokenizer", "tokenizer")
    assert "shards/manifest.json" in artifacts("shards", "shards")
    assert "eval/bench_dual_primal" in artifacts("bench", "eval")
    assert {"eval/niah", "eval/latency", "eval/perplexity", "eval/position_loss"} <= artifacts(
        "evaluate", "eval"
    )
    assert "model/model.safetensors" in artifacts("evaluate", "model")
    record = (cfg.run_dir / "bringup.json").read_text()
    assert '"status": "completed"' in record


def flow_runs(api_url: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs()


@pytest.mark.slow
def test_a_failing_bringup_is_restarted_until_the_cap_then_cancelled(served):
    run_root, env = served
    cfg = PipelineConfig.from_preset(
        "debug_tiny", run_root=run_root, baseline="missing", evals=["perplexity"], max_restarts=1
    )  # fails deterministically at evaluate: the baseline export does not exist
    command = [
        sys.executable, "-m", "prefect", "deployment", "run", "bringup/bringup",
        "--param", f"config={cfg.model_dump_json()}",
    ]  # fmt: skip
    for _ in range(60):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            break
        subprocess.run(["sleep", "2"], check=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        runs = [r for r in flow_runs(env["PREFECT_API_URL"]) if r.state and r.state.is_final()]
        if any(r.state.is_cancelled() for r in runs):
            break
        time.sleep(3)
    by_restart: dict[int, set[str]] = {}
    for run in runs:
        by_restart.setdefault(run.parameters.get("restart_count", 0), set()).add(run.state.name)
    assert by_restart == {0: {"Failed"}, 1: {"Failed"}, 2: {"Cancelled"}}
    cancelled = next(r for r in runs if r.state.is_cancelled())
    assert "max_restarts=1" in cancelled.state.message
    record = json.loads((cfg.run_dir / "bringup.json").read_text())
    assert record["status"] == "failed" and record["attempts"] == 2
    assert "baseline 'missing'" in record["error"]
