"""Running the CLIs in this process as a user would, and the checks every fault case makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data_stage import verify_shards
from tests.helpers import (  # noqa: F401  (re-exported: the fault tests import them from here)
    HANG_GUARD_S,
    NoCapture,
    run_main,
    wait_for,
)
from train_stage.checkpoint import CHECKPOINTS, verify_checkpoint

# The smallest training that saves twice: checkpoints at steps 2 and 4.
TRAIN = ("--preset", "debug_tiny", "--no-mlflow", "--seq-len", "32", "--batch-size", "4",
         "--steps", "4", "--save-every", "2", "--stats-every", "0")  # fmt: skip


def failure_line(err: str, prog: str) -> str:
    """The one line a failed command printed about its failure: no traceback, and exactly one
    line from the command itself (progress bars and `[train]` notes may come before it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prog)]
    assert len(lines) == 1, err
    return lines[0]


def leaked_temps(root: Path) -> list[Path]:
    """Temp files and dirs of the project's writers (`.tmp-*`, `.*.tmp`) left under `root`."""
    return sorted(
        p
        for p in Path(root).rglob("*")
        if p.name.startswith(".tmp-") or (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def latest_name(run_dir: Path) -> str:
    return (run_dir / CHECKPOINTS / "latest").read_text().strip()


def assert_run_intact(run_dir: Path) -> None:
    """Every checkpoint of the run verifies against its checksums, `latest` names one of them,
    and metrics.jsonl is whole JSON lines."""
    steps = sorted((run_dir / CHECKPOINTS).glob("step_*"))
    assert steps, f"{run_dir} has no checkpoint"
    for step in steps:
        assert verify_checkpoint(step) is True, step
    assert (run_dir / CHECKPOINTS / latest_name(run_dir)) in steps
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert not leaked_temps(run_dir), leaked_temps(run_dir)


def assert_shards_intact(directory: Path) -> None:
    assert verify_shards(directory) == []
    assert not leaked_temps(directory), leaked_temps(directory)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, as the trainer wrote them."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes): to prove a command changed nothing."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


def flip_byte(path: Path, offset: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def trainer_process(run_dir: Path, shards: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "train_stage", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metrics_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0
