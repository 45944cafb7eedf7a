"""SIGKILL at moments placed by what the trainer is observed doing (never by a sleep): in the
middle of a checkpoint save, and between steps. The dead trainer's lock is taken over, its temp
dir removed, and the resumed run matches an uninterrupted one bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from train_stage.checkpoint import verify_checkpoint
from train_stage.cli import main as train_main

from .helpers import (
    TRAIN,
    NoCapture,
    assert_run_intact,
    latest_name,
    losses,
    metrics_lines,
    run_main,
    trainer_process,
    wait_for,
)

KILL_ARGS = ("--steps", "6")  # with TRAIN's --save-every 2: saves at steps 2, 4 and 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> dict[int, float]:
    """The losses of the same run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *KILL_ARGS]
    assert run_main(train_main, argv, NoCapture())[0] == 0
    return losses(run_dir)


def _saving(run_dir: Path) -> bool:
    """A checkpoint is being written right now (its temp dir exists)."""
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob(".tmp-step_*"))


def _kill_and_resume(run_dir: Path, shards: Path, capsys) -> str:
    code, _, err = run_main(
        train_main,
        [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *KILL_ARGS, "--resume", "auto"],
        capsys,
    )
    assert code == 0, err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save(shards, tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    trainer = trainer_process(run_dir, shards, *KILL_ARGS)
    # Step 2's save happens before step 2 is logged: 3 lines logged means a later save.
    wait_for(
        lambda: _saving(run_dir) and metrics_lines(run_dir) >= 3, "a later save", process=trainer
    )
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    partial = sorted((run_dir / "checkpoints").glob(".tmp-step_*"))
    assert partial, "the kill was meant to land mid-save"
    assert_run_intact_but_temps(run_dir)
    err = _kill_and_resume(run_dir, shards, capsys)  # takes over the dead trainer's lock
    assert f"removed {partial[0]}" in err
    assert losses(run_dir) == reference
    assert latest_name(run_dir) == "step_00000006"
    assert_run_intact(run_dir)


@pytest.mark.slow
def test_sigkill_between_steps(shards, tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    trainer = trainer_process(run_dir, shards, *KILL_ARGS)
    wait_for(lambda: metrics_lines(run_dir) >= 3, "three logged steps", process=trainer)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    _kill_and_resume(run_dir, shards, capsys)
    assert losses(run_dir) == reference
    assert_run_intact(run_dir)


def assert_run_intact_but_temps(run_dir: Path) -> None:
    """Before the resume: every committed checkpoint verifies and `latest` names one of them
    (the killed save's temp dir is still there; the next start removes it)."""
    steps = sorted((run_dir / "checkpoints").glob("step_*"))
    assert steps and all(verify_checkpoint(step) for step in steps)
    assert (run_dir / "checkpoints" / latest_name(run_dir)) in steps
