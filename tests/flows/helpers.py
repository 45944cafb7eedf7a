"""Process and run-directory helpers shared by the end-to-end flow tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from flows.config import PipelineConfig
from flows.fingerprint import manifest_sha256
from tests.helpers import HANG_GUARD_S, wait_for


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


def exited(pid: int) -> bool:
    """The process is gone or a zombie (it has exited, only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone: no such file, or ESRCH when it exits between open and read
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def latest_step(run_dir: Path) -> int:
    """The step of the checkpoint `checkpoints/latest` names (0 when there is none)."""
    pointer = run_dir / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else 0


class Kill(NamedTuple):
    """What a kill placed by `kill_after_step` left, read from disk after its ranks exited."""

    sent_at_step: int  # the last step logged when SIGKILL was sent: the trainer was at or past it
    last_logged: int  # the last step the killed ranks logged
    checkpoint: int  # the step `latest` named once they had exited: where a resume must start


def kill_after_step(
    run_dir: Path, step: int, victim: Callable[[dict[str, list[int]]], list[int]]
) -> Kill:
    """Once the run in `run_dir` logs `step`, SIGKILL the pids `victim(training_pids)` picks,
    wait for the ranks alive then to exit and read what they left. The kill is placed on an
    observed event, never on elapsed time, and the result holds at any machine speed; a next
    attempt cannot have saved yet (it waits for these ranks, then loads and trains first)."""
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: last_step(metrics) >= step, f"training to pass step {step}")
    pids = training_pids(str(run_dir))
    targets = victim(pids)
    sent_at = last_step(metrics)
    for pid in targets:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(exited(p) for p in pids["workers"]), "the killed ranks to exit")
    kill = Kill(sent_at, last_step(metrics), latest_step(run_dir))
    print(f"kill placed after step {step}: {kill}")
    return kill


def flows_up(run_root: Path, prefect_port: int, mlflow_port: int, *flags: str, **popen):
    """`python -m flows up` over `run_root` in its own process group, output piped as text."""
    command = [sys.executable, "-m", "flows", "up", "--run-root", str(run_root),
               "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port), *flags]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)  # fmt: skip


def children_of(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = parent_pid(int(entry))
            except OSError:  # exited meanwhile
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


# (train config with its run dir blanked, sha256 of the shards' manifest) -> final loss
_UNINTERRUPTED: dict[tuple[str, str], float] = {}


def uninterrupted_final_loss(cfg: PipelineConfig, out: Path) -> float:
    """Train the bring-up's recorded train config in one go into `out`; its final loss. Trained
    once per session for the same config on the same shards (the manifest lists every shard's
    sha256): the kill/resume tests of several recovery paths compare against one reference."""
    config = cfg.stage_dir("train") / "train_config.yaml"
    key = (
        config.read_text().replace(str(cfg.run_dir), "<run_dir>"),
        manifest_sha256(cfg.stage_dir("shards")),
    )
    if key not in _UNINTERRUPTED:
        subprocess.run(
            [sys.executable, "-m", "train_stage", "--config", str(config),
             "--run-dir", str(out), "--no-mlflow"],
            check=True, capture_output=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["steps"] == cfg.train_config().steps
        _UNINTERRUPTED[key] = summary["final_loss"]
    return _UNINTERRUPTED[key]
