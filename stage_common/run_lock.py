"""An advisory lock on a train_stage run directory, held by the one process that writes into it
(the trainer, or an eval writing its results there). It lives in `stage_common`, below every
stage, so that eval_stage takes it without importing the trainer.

`<run_dir>/.run.lock` is locked with `flock` (the `filelock` package) for the life of the
process, so the kernel releases it when the holder dies, however it dies: a lock left by a dead
process is simply taken over. `<run_dir>/.run.owner` records the holder's pid, host and command
for the refusal message (a separate file, because a contender opening the lock file may
truncate it). Under torchrun only rank 0 takes it: rank 0 does every write outside the
collective DCP save, and the other ranks of a refused launch are stopped by torchrun when their
rank 0 exits. This lock is independent of the `flows` bring-up lock (`.bringup.lock`, one level
up), so a flow that launches train_stage cannot deadlock with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from ttt_core.files import atomic_write_bytes

LOCK_FILE, OWNER_FILE = ".run.lock", ".run.owner"


class RunDirUnusable(ValueError):
    """The run directory cannot be created where it was asked for (bad input: exit 2)."""


class RunDirBusy(ValueError):
    """Another live process holds the run directory's lock (a refusal: exit 2)."""


def is_run_dir(path: Path) -> bool:
    """A train_stage run directory: it has a resolved config and a checkpoints folder."""
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def enclosing_run_dir(path: Path) -> Path | None:
    """The run directory `path` is (or would be) inside, or None."""
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if is_run_dir(candidate):
            return candidate
    return None


class RunDirLock:
    """`with RunDirLock(run_dir, "train_stage"):` holds the lock or raises `RunDirBusy`.

    When the run dir did not exist, `release(undo=True)` removes what acquiring created (the
    lock files and the empty directory): a refused command leaves nothing behind."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir = Path(run_dir)
        self.command = command
        self.created = False
        self._lock: FileLock | None = None

    def acquire(self) -> RunDirLock:
        self.created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, FileNotFoundError, NotADirectoryError) as e:
            raise RunDirUnusable(f"{self.run_dir}: cannot be a run directory ({e.strerror})") from e
        lock = FileLock(self.run_dir / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirBusy(
                f"{self.run_dir} is in use by {self._owner()}; wait for it to end or stop it, "
                "or use another directory"
            ) from None
        self._lock = lock
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "argv": sys.argv,
        }
        atomic_write_bytes(self.run_dir / OWNER_FILE, json.dumps(owner).encode())
        return self

    def _owner(self) -> str:
        try:
            owner = json.loads((self.run_dir / OWNER_FILE).read_text())
            return f"{owner['command']} (pid {owner['pid']} on host {owner['host']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (owner unknown: it has only just started)"

    def release(self, undo: bool = False) -> None:
        """Unlock; with `undo`, also remove what `acquire` created in a new run dir."""
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        if undo:
            self._undo_created()

    def _undo_created(self) -> None:
        if not self.created:
            return
        for name in (OWNER_FILE, LOCK_FILE):
            (self.run_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else was written meanwhile: keep it
            self.run_dir.rmdir()

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
