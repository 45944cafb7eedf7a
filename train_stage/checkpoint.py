"""Checkpoints of the full training state, one `torch.distributed.checkpoint` directory each.

Layout under `<run_dir>/checkpoints/`: `step_00000100/` (DCP files + `meta.json`) and `latest`
(a text file naming the newest complete checkpoint). A save is written to `.tmp-step_.../`,
renamed when every rank has finished, and only then is `latest` replaced (atomically), so a crash
at any moment leaves `latest` naming a loadable checkpoint. The oldest beyond `keep_last` are
removed after the pointer moves.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ttt_core.files import atomic_write_text, fsync_dir

# One process without a process group is a supported way to run; DCP need not warn about it.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, or None when the run has none yet."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / ".metadata").exists():
        raise FileNotFoundError(
            f"{pointer} names {path.name}, which is missing or incomplete; remove the pointer "
            "to start over or pass --resume PATH with a complete checkpoint"
        )
    return path


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META).read_text())


class Checkpointer:
    """Saves and loads the state dict `{model, optim, scheduler, data, train, rng, ...}`."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep_last = keep_last
        if _is_rank0():
            self.root.mkdir(parents=True, exist_ok=True)
            # left by a crash mid-save: a checkpoint dir, or the temp of the `latest` pointer
            for stale in [*self.root.glob(f"{TMP_PREFIX}*"), *self.root.glob(".*.tmp")]:
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        _barrier()

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> tuple[Path, float]:
        """Collective: every rank calls it. Returns (checkpoint dir, seconds taken)."""
        start = time.perf_counter()
        final = self.root / step_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        dcp.save(state, checkpoint_id=tmp)
        _barrier()
        if _is_rank0():
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if final.exists():  # a re-save of the same step after a resume
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            atomic_write_text(self.root / LATEST, final.name + "\n")
            self._purge()
        _barrier()
        return final, time.perf_counter() - start

    def load(self, checkpoint: Path, state: dict[str, Any]) -> float:
        """Fill `state` in place from `checkpoint` (DCP reshards to this world size)."""
        start = time.perf_counter()
        dcp.load(state, checkpoint_id=Path(checkpoint))
        return time.perf_counter() - start

    def _purge(self) -> None:
        complete = sorted(p for p in self.root.glob("step_*") if (p / ".metadata").exists())
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
