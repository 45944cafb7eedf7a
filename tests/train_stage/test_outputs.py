"""`TrainOutputs`: a run dir's files and whether the run completed."""

from __future__ import annotations

import json

from train_stage import TrainOutputs


def test_a_run_is_complete_when_its_summary_says_so_and_its_checkpoint_exists(tmp_path):
    run = TrainOutputs(tmp_path / "train")
    assert not run.complete() and run.mlflow_run_id() is None
    checkpoint = run.checkpoints_dir / "step_00000002"
    checkpoint.mkdir(parents=True)
    summary = {"status": "completed", "checkpoint": str(checkpoint), "steps": 2}
    run.summary_file.write_text(json.dumps(summary))
    assert run.complete() and run.summary() == summary
    assert run.summary_file.name == "train_summary.json"
    checkpoint.rmdir()
    assert not run.complete()
    checkpoint.mkdir()
    run.summary_file.write_text(json.dumps({**summary, "status": "stopped"}))
    assert not run.complete()
    run.summary_file.write_text("{not json")
    assert not run.complete()


def test_the_mlflow_run_id_is_read_from_its_file(tmp_path):
    run = TrainOutputs(tmp_path)
    assert run.mlflow_run_id_file not in run.files
    run.mlflow_run_id_file.write_text("abc123\n")
    assert run.mlflow_run_id() == "abc123" and run.mlflow_run_id_file in run.files
