"""The results JSON schema, where results go, and MLflow logging into an existing run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from eval_stage import (
    EvalResult,
    PerplexityConfig,
    TrackingConfig,
    evaluate_perplexity,
    publish,
    read_result,
)
from eval_stage.models import default_out_dir
from eval_stage.results import SCHEMA_VERSION

from .helpers import VOCAB, UniformLM, as_loaded, run_cli


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking URI, run id) of a fresh SQLite store with one open run, made as a flow would."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("eval-test", artifact_location=str(root / "artifacts"))
    return uri, client.create_run(experiment).info.run_id


def test_json_round_trips_and_names_producer_device_and_config(
    shard_dir: Path, tmp_path: Path
) -> None:
    result = evaluate_perplexity(
        as_loaded(UniformLM(VOCAB)), PerplexityConfig(data=shard_dir, max_batches=1)
    )
    (path,) = publish(result, tmp_path)
    saved = read_result(path)
    assert saved == result
    assert saved.schema_version == SCHEMA_VERSION and saved.eval == "perplexity"
    assert saved.created_by.startswith("eval_stage ") and saved.device.type == "cpu"
    assert saved.config["data"] == str(shard_dir) and saved.models[0].mixer == "ttt_linear"
    assert EvalResult.model_json_schema()["required"] == ["eval", "device", "config", "metrics"]


def test_results_default_to_the_export_or_the_run_checkpoint(
    model_dir: Path, tmp_path: Path
) -> None:
    assert default_out_dir(as_loaded(UniformLM(VOCAB), source=str(model_dir))) == model_dir / "eval"
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000040"
    loaded = as_loaded(UniformLM(VOCAB), source=str(checkpoint), run_dir=str(tmp_path / "run"))
    assert default_out_dir(loaded) == tmp_path / "run" / "eval" / "step_00000040"
    assert default_out_dir(as_loaded(UniformLM(VOCAB), source="preset:debug_tiny")) is None


def test_cli_logs_metrics_json_and_plot_to_the_given_run(
    mlflow_run, model_dir: Path, shard_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    uri, run_id = mlflow_run
    argv = ["perplexity", "--model", str(model_dir), "--data", str(shard_dir), "--max-batches", "2",
            "--out", str(tmp_path / "ppl"), "--mlflow-run-id", run_id, "--mlflow-tracking-uri", uri]  # fmt: skip
    assert run_cli(argv) == 0
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # the environment works as well as the flags
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    argv = ["position-loss", "--model", str(model_dir), "--data", str(shard_dir), "--sequences", "2",
            "--multipliers", "1", "--out", str(tmp_path / "pos")]  # fmt: skip
    assert run_cli(argv) == 0
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # not ended: the run belongs to its creator
    saved = read_result(tmp_path / "ppl" / "perplexity.json")
    assert run.data.metrics["perplexity/model/loss"] == pytest.approx(
        saved.metrics["perplexity/model/loss"]
    )
    assert "position_loss/model/len_32/mean_loss" in run.data.metrics
    history = client.get_metric_history(run_id, "perplexity/model/loss")
    assert [m.step for m in history] == [7]  # the model's training step
    assert [a.path for a in client.list_artifacts(run_id, "eval/perplexity")] == [
        "eval/perplexity/perplexity.json"
    ]
    assert {a.path for a in client.list_artifacts(run_id, "eval/position_loss")} == {
        "eval/position_loss/position_loss.json",
        "eval/position_loss/position_loss.png",
    }


def test_mlflow_failure_is_a_warning_and_the_files_stay(
    mlflow_run, shard_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, _ = mlflow_run
    result = evaluate_perplexity(
        as_loaded(UniformLM(VOCAB)), PerplexityConfig(data=shard_dir, max_batches=1)
    )
    tracking = TrackingConfig(run_id="0" * 32, tracking_uri=uri)  # no such run
    with caplog.at_level(logging.WARNING):
        (path,) = publish(result, tmp_path, tracking)
    assert path.exists() and read_result(path).metrics == result.metrics
    assert "MLflow logging to run 000" in caplog.text and "results are on disk" in caplog.text


def test_tracking_config_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert TrackingConfig.from_env() == TrackingConfig(run_id="abc", tracking_uri="sqlite:///x.db")
    assert TrackingConfig.from_env(run_id="flag").run_id == "flag"
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert TrackingConfig.from_env().run_id is None
