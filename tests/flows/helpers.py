"""Process and run-directory helpers shared by the end-to-end flow tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flows.config import PipelineConfig


def cmdlines() -> dict[int, str]:
    """pid -> command line of every process this user can see."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            found[int(entry)] = b" ".join(argv).decode(errors="replace")
    return found


def training_pids(marker: str) -> dict[str, list[int]]:
    """{"launcher": torchrun pids, "workers": train_stage rank pids} whose command line mentions
    `marker` (a run root)."""
    pids: dict[str, list[int]] = {"launcher": [], "workers": []}
    for pid, text in cmdlines().items():
        if "train_stage" in text and marker in text:
            pids["launcher" if "torch.distributed.run" in text else "workers"].append(pid)
    return pids


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `condition` until it returns something truthy; the timeout fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def uninterrupted_final_loss(cfg: PipelineConfig, out: Path) -> float:
    """Train the bring-up's recorded train config in one go into `out`; its final loss."""
    subprocess.run(
        [sys.executable, "-m", "train_stage", "--config",
         str(cfg.stage_dir("train") / "train_config.yaml"),
         "--run-dir", str(out), "--no-mlflow"],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == cfg.train_config().steps
    return summary["final_loss"]
