"""`<run_dir>/bringup.json` (what a bring-up is, how far it got) and its lock file.

The record is rewritten atomically after each stage. The lock (`<run_dir>/.bringup.lock`, the
owning pid) marks a bring-up as running; a lock whose pid is gone is stale and ignored.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flows.config import PipelineConfig
from flows.request import BringupRequest
from ttt_core import atomic_write_text

RECORD_FILE, LOCK_FILE = "bringup.json", ".bringup.lock"
Status = Literal["running", "completed", "failed"]


class BringupRecord(BaseModel):
    status: Status
    config: PipelineConfig
    request: BringupRequest | None = Field(None, description="the flow's parameters")
    attempts: int = Field(0, ge=0, description="flow runs that worked on this bring-up")
    restart_count: int = 0
    flow_run_ids: list[str] = Field(default_factory=list)
    mlflow_parent_run_id: str | None = None
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    error: str | None = None
    commands: dict[str, str] = Field(
        default_factory=dict, description="stage -> the stage CLI command that redoes it"
    )
    summary: dict[str, float] = Field(
        default_factory=dict, description="headline metrics (flows.headline), baseline/ beside"
    )
    updated_at: float = Field(default_factory=time.time)


def read_record(run_dir: Path) -> BringupRecord | None:
    path = run_dir / RECORD_FILE
    if not path.is_file():
        return None
    return BringupRecord.model_validate_json(path.read_text())


def write_record(record: BringupRecord) -> None:
    run_dir = record.config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    record = record.model_copy(update={"updated_at": time.time()})
    atomic_write_text(run_dir / RECORD_FILE, record.model_dump_json(indent=2))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(run_dir: Path) -> int | None:
    """The live pid holding the bring-up's lock, or None (no lock, or a stale one)."""
    try:
        pid = int((run_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def acquire_lock(run_dir: Path) -> None:
    """Take the lock for this process; a live other owner is an error naming it."""
    owner = lock_owner(run_dir)
    if owner is not None and owner != os.getpid():
        raise RuntimeError(
            f"{run_dir}: bring-up already running in pid {owner}; wait for it or stop it first"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(f"{os.getpid()}\n")


def release_lock(run_dir: Path) -> None:
    if lock_owner(run_dir) == os.getpid():
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
