"""A training worker SIGKILLed mid-run: the train task's retry resumes from the latest
checkpoint and the bring-up ends with exactly the loss of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flows.config import PipelineConfig
from tests.flows.helpers import last_step, training_pids, uninterrupted_final_loss


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_loss(tmp_path):
    sets = ["train.steps=40", "train.save_every=10", "evals=[perplexity]"]
    cfg = PipelineConfig.from_preset(
        "debug_tiny", run_root=tmp_path, train={"steps": 40, "save_every": 10}, evals=["perplexity"]
    )
    command = [sys.executable, "-m", "flows", "run", "--preset", "debug_tiny",
               "--run-root", str(tmp_path)] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    flow = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = cfg.stage_dir("train") / "metrics.jsonl"
    killed = []
    deadline = time.monotonic() + 150
    while not killed and time.monotonic() < deadline and flow.poll() is None:
        if last_step(metrics) >= 15:
            for pid in training_pids(str(tmp_path))["workers"]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    out, _ = flow.communicate(timeout=240)
    assert killed, out[-3000:]
    assert flow.returncode == 0, out[-3000:]
    assert "exit code -9" in out  # the first attempt failed with the worker's signal
    assert "resumed from" in out

    record = json.loads((cfg.run_dir / "bringup.json").read_text())
    assert record["status"] == "completed"
    resumed = record["outputs"]["train"]
    assert resumed["steps"] == 40
    assert resumed["resumed_from_step"] == 10  # a SIGKILLed worker saves nothing
    assert resumed["final_loss"] == uninterrupted_final_loss(cfg, tmp_path / "reference")
