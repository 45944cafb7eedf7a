"""Checkpoints of the full training state, one `torch.distributed.checkpoint` directory each.

Layout under `<run_dir>/checkpoints/`: `step_00000100/` (DCP files, `meta.json` and
`checksums.json`) and `latest` (a text file naming the newest complete checkpoint). A save is
written to `.tmp-step_.../`, `meta.json` and then `checksums.json` (the sha256 of every other
file) are added inside it, the directory is renamed when every rank has finished, and only then
is `latest` replaced (atomically): a crash at any moment leaves `latest` naming a loadable
checkpoint, and bytes damaged later are caught by the checksums at load. The oldest beyond
`keep_last` are removed after the pointer moves. Checkpoints written before checksums existed
(meta `format` 1) still load, reported as unverified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from stage_common.faults import NoSpaceError, free_bytes, is_no_space
from ttt_core.files import (
    CHECKSUMS_FILE,
    IntegrityError,
    atomic_write_bytes,
    atomic_write_text,
    verify_checksums,
    write_checksums,
)

from .outputs import CHECKPOINTS

# One process without a process group is a supported way to run; DCP need not warn about it.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")

LATEST = "latest"
META = "meta.json"
CHECKSUMS = CHECKSUMS_FILE
TMP_PREFIX = ".tmp-"
FORMAT = 2  # meta["format"]: 2 carries checksums.json; 1 (no field) is the unverified original
_STEP = re.compile(r"step_(\d{8})")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or damaged; the message is one line."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def step_of(path: Path) -> int | None:
    """The step of a `step_XXXXXXXX` directory name, None for any other name."""
    match = _STEP.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META).read_text())


def verify_checkpoint(checkpoint: Path) -> bool:
    """Check a checkpoint directory: True when every file matches its recorded sha256, False
    for an older checkpoint without checksums (loadable, unverified). `CheckpointError` naming
    the file and the damage otherwise."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
    if not (checkpoint / ".metadata").is_file():
        raise CheckpointError(f"{checkpoint}: not a complete checkpoint directory (no .metadata)")
    try:
        meta = read_meta(checkpoint)
        version = int(meta.get("format", 1))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{checkpoint / META}: unreadable ({type(e).__name__})") from e
    if version < FORMAT:
        return False
    try:
        listed = verify_checksums(checkpoint)
    except IntegrityError as e:
        raise CheckpointError(str(e)) from e
    unlisted = sorted(
        p.name
        for p in checkpoint.iterdir()
        if (p.suffix == ".distcp" or p.name in (".metadata", META)) and p.name not in listed
    )
    if unlisted:
        raise CheckpointError(f"{checkpoint / CHECKSUMS}: does not cover {', '.join(unlisted)}")
    return True


@dataclass
class CheckpointChoice:
    """The newest intact checkpoint of a run (None when it has none) and how it was found."""

    checkpoint: Path | None
    verified: bool = False
    notes: list[str] = field(default_factory=list)  # one line each: what was skipped and why

    def describe(self) -> str:
        status = "verified" if self.verified else "unverified: saved without checksums"
        return f"{self.checkpoint} ({status})"


def _candidates(root: Path, notes: list[str]) -> list[Path]:
    """Checkpoints to try, newest first: the one `latest` names, then the older step dirs
    (newer ones belong to a save that never became `latest`, or to an abandoned timeline)."""
    steps = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and step_of(p) is not None),
        key=step_of,
        reverse=True,
    )
    pointer = root / LATEST
    if not pointer.exists():
        return steps
    try:
        named = root / pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = root / "?"
    if step_of(named) is None or not named.is_dir():
        notes.append(f"{pointer} names no checkpoint directory; trying the step directories")
        return steps
    return [named, *(p for p in steps if step_of(p) < step_of(named))]


def choose_checkpoint(run_dir: Path) -> CheckpointChoice:
    """The newest intact checkpoint of `run_dir`, skipping damaged ones (each noted with the
    reason). `CheckpointError` when the run has checkpoints but none is intact."""
    notes: list[str] = []
    candidates = _candidates(Path(run_dir) / CHECKPOINTS, notes)
    for candidate in candidates:
        try:
            verified = verify_checkpoint(candidate)
        except CheckpointError as e:
            notes.append(f"skipped checkpoint {candidate.name}: {e}")
            continue
        if notes:
            notes.append(f"using {candidate.name}, the newest intact checkpoint")
        return CheckpointChoice(candidate, verified, notes)
    if candidates:
        raise CheckpointError(
            f"{Path(run_dir) / CHECKPOINTS}: no intact checkpoint ({'; '.join(notes)}); "
            "remove the damaged ones to start over, or train in a new --run-dir"
        )
    return CheckpointChoice(None, notes=notes)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def latest_checkpoint(run_dir: Path, say: Callable[[str], None] = _stderr) -> Path | None:
    """The newest intact checkpoint of a run (None when it has none), as evaluation and export
    read it: a damaged newest one is skipped with a line to `say` naming it and why."""
    choice = choose_checkpoint(run_dir)
    for note in choice.notes:
        say(f"[checkpoint] {note}")
    if choice.checkpoint is not None and not choice.verified:
        say(f"[checkpoint] loading {choice.describe()}")
    return choice.checkpoint


def repoint_latest(run_dir: Path, checkpoint: Path) -> bool:
    """Make `latest` name `checkpoint` (a run resuming from it after skipping a damaged newer
    one, or a damaged pointer); True when the pointer changed."""
    root = Path(run_dir) / CHECKPOINTS
    if Path(checkpoint).parent.resolve() != root.resolve():
        return False  # --resume PATH into another run: this run's pointer moves at its first save
    pointer = root / LATEST
    try:
        if pointer.read_text().strip() == Path(checkpoint).name:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(pointer, Path(checkpoint).name + "\n")
    return True


def clean_stale_temps(run_dir: Path) -> list[Path]:
    """Remove what an interrupted save or write left (`.tmp-*` in the run dir and its
    checkpoints dir); only the run dir's lock holder may call this. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        for stale in folder.glob(f"{TMP_PREFIX}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict, this rank's shards only."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def _root_cause(error: BaseException) -> BaseException:
    """The first rank's exception inside a DCP `CheckpointException`, else `error` itself."""
    if isinstance(error, CheckpointException) and error.failures:
        first = next(iter(error.failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return error


class Checkpointer:
    """Saves and loads the state dict `{model, optim, scheduler, data, train, rng, ...}`."""

    def __init__(self, run_dir: Path, keep_last: int):
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep_last = keep_last

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> tuple[Path, float]:
        """Collective: every rank calls it. Returns (checkpoint dir, seconds taken).

        Any failure (on any rank) fails the save on every rank together, its temp dir removed
        and `latest` still naming the previous checkpoint; a full disk is a `NoSpaceError`."""
        start = time.perf_counter()
        final = self.root / step_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        error: BaseException | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            dcp.save(state, checkpoint_id=tmp)  # collective: a failing rank fails every rank
        except (Exception, CheckpointException) as e:
            error = _root_cause(e)
        if error is None and _is_rank0():
            try:
                text = json.dumps({**meta, "format": FORMAT}, indent=2, sort_keys=True)
                atomic_write_bytes(tmp / META, text.encode())
                write_checksums(tmp)
                if final.exists():  # a re-save of the same step after a resume
                    shutil.rmtree(final)
                os.replace(tmp, final)  # made durable by the fsync of `latest`'s directory
                atomic_write_text(self.root / LATEST, final.name + "\n")
                self._purge(step)
            except Exception as e:  # shared below, so the other ranks do not wait forever
                error = e
        failure = None
        if _is_rank0() and error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            failure = self._failure(error, tmp, state)
        failure = _rank0_verdict(failure)
        if failure is not None:
            raise failure
        return final, time.perf_counter() - start

    def _failure(self, error: BaseException, tmp: Path, state: dict[str, Any]) -> Exception:
        """What a failed save raises: a `NoSpaceError` when the disk is full, recognised by
        ENOSPC among the causes or, since DCP hands other ranks' errors over without their
        causes (a serializer's "unexpected pos"), by less free space than the save needs."""
        previous = choose_checkpoint_quietly(self.root.parent)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        needed = _tree_bytes(previous) if previous else _state_bytes(state) * world
        if not (is_no_space(error) or free_bytes(tmp) < needed):
            return error if isinstance(error, Exception) else RuntimeError(str(error))
        kept = f"{previous.name} is intact" if previous else "no earlier checkpoint"
        return NoSpaceError(tmp, needed, f"{kept}; free space and rerun with --resume auto")

    def load(self, checkpoint: Path, state: dict[str, Any]) -> float:
        """Fill `state` in place from `checkpoint` (DCP reshards to this world size)."""
        start = time.perf_counter()
        dcp.load(state, checkpoint_id=Path(checkpoint))
        return time.perf_counter() - start

    def _purge(self, saved: int) -> None:
        """Keep the newest `keep_last` checkpoints up to the one just saved; newer directories
        (an abandoned timeline, a damaged skipped one) are left to be replaced when reached."""
        complete = sorted(
            p
            for p in self.root.glob("step_*")
            if (p / ".metadata").exists() and (step_of(p) or 0) <= saved
        )
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def choose_checkpoint_quietly(run_dir: Path) -> Path | None:
    """The newest intact checkpoint, or None (also when none is intact)."""
    try:
        return choose_checkpoint(run_dir).checkpoint
    except CheckpointError:
        return None


def _rank0_verdict(failure: Exception | None) -> Exception | None:
    """Every rank ends up with rank 0's outcome of a save (None: saved), so all raise together
    and none is left waiting in a collective. DCP already fails a save on every rank when one
    rank's writes fail; this also shares the failures of rank 0's own commit steps."""
    if not (dist.is_available() and dist.is_initialized()):
        return failure
    sent: list[tuple[int | None, str] | None] = [None]
    if dist.get_rank() == 0 and failure is not None:
        sent = [(getattr(failure, "errno", None), str(failure))]
    dist.broadcast_object_list(sent, src=0)
    if dist.get_rank() == 0 or sent[0] is None:
        return failure
    code, message = sent[0]
    return OSError(code, message) if code is not None else RuntimeError(message)
