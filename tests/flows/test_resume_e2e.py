"""A training worker SIGKILLed mid-run: the train task's retry resumes from the latest
checkpoint and the bring-up ends with exactly the loss of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.config import PipelineConfig


def worker_pids(marker: str) -> list[int]:
    """train_stage workers (not the torchrun launcher) whose command line mentions `marker`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if "train_stage" in text and marker in text and "torch.distributed.run" not in text:
            pids.append(int(entry))
    return pids


def last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


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
            for pid in worker_pids(str(tmp_path)):
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

    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, "-m", "train_stage", "--config",
         str(cfg.stage_dir("train") / "train_config.yaml"),
         "--run-dir", str(reference), "--no-mlflow"],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    whole = json.loads((reference / "train_summary.json").read_text())
    assert resumed["steps"] == whole["steps"] == 40
    assert resumed["final_loss"] == whole["final_loss"]
