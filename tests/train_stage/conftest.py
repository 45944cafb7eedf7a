"""A tiny real dataset (the session's `debug_tiny_data`: stdlib text, 512-token SentencePiece,
rows of 65 ids) and helpers to run the trainer as a user would: `python -m train_stage` in a
subprocess, alone or under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_main
from train_stage.cli import main
from train_stage.distributed import torchrun_command


@pytest.fixture(scope="session")
def tiny_shards(debug_tiny_data) -> Path:
    return debug_tiny_data.shards


def train_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env


def run_train(
    *args: str, nproc: int = 1, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m train_stage ARGS`, or under torchrun with `nproc` processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "train_stage", *args]
    else:
        cmd = torchrun_command(nproc, "train_stage", args)
    result = subprocess.run(cmd, capture_output=True, text=True, env=train_env(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def run_in_process(capsys, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m train_stage ARGS` as `main(ARGS)` in this process (same exit code and
    output); `check` asserts exit 0."""
    code, out, err = run_main(main, args, capsys)
    assert code == 0 or not check, err
    return subprocess.CompletedProcess(args, code, out, err)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from the run's metrics.jsonl (what the trainer wrote, not its exit code)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}
