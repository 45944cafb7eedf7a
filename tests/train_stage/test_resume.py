"""Exact resume: a run stopped at any point continues as if it never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_stage.config import TrainConfig
from train_stage.preflight import ConfigError, preflight
from ttt_core import ModelConfig

from .conftest import losses, run_train, train_env

TINY = ("--preset", "debug_tiny", "--no-mlflow", "--seq-len", "32", "--batch-size", "4")


def test_resume_is_bitwise_exact_single_process_even_with_operational_changes(
    tiny_shards, tmp_path, capsys
):
    """The resumed half changes only operational fields (cadences, checkpointing through time):
    it resumes, and the losses are those of the uninterrupted run, bit for bit."""
    common = (*TINY, "--data", str(tiny_shards), "--steps", "16")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_train(*common, "--run-dir", str(whole), "--save-every", "8")
    run_train(*common, "--run-dir", str(parts), "--stop-at", "8", "--save-every", "100")
    summary = json.loads((parts / "train_summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["resumed_from_step"]) == (
        "stopped",
        8,
        None,
    )
    operational = ("--save-every", "3", "--keep-last", "1", "--stats-every", "1")
    operational += ("--eval-every", "4", "--eval-batches", "2", "--checkpoint-n-chunks", "2")
    result = run_train(*common, "--run-dir", str(parts), "--resume", "auto", *operational)
    assert "changed training settings" not in result.stderr
    assert losses(parts) == losses(whole)
    assert len(losses(whole)) == 16
    assert json.loads((parts / "train_summary.json").read_text())["resumed_from_step"] == 8

    # Identity decides what resuming this checkpoint means (checked in process: no training).
    saved = TrainConfig.from_yaml(parts / "config.yaml")
    model = saved.model.model_dump()
    target = preflight(saved.model_copy(update={"lr": 1e-4}), world=1)
    assert target == parts / "checkpoints" / "step_00000016"
    assert "changed training settings (lr: 0.003 -> 0.0001)" in capsys.readouterr().err
    other_model = saved.model_copy(update={"model": ModelConfig(**{**model, "eta_base": 0.5})})
    with pytest.raises(ConfigError, match=r"different model config \(differs in eta_base\)"):
        preflight(other_model, world=1)


@pytest.mark.slow
def test_resume_is_bitwise_exact_under_fsdp_with_two_processes(tiny_shards, tmp_path):
    args = (*TINY, "--strategy", "fsdp", "--data", str(tiny_shards), "--save-every", "6")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # Judged by the written losses: a rare gloo abort at process exit is not a training failure.
    run_train(*args, "--run-dir", str(whole), "--steps", "12", nproc=2, check=False)
    interrupted = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "train_stage",
            *args,
            "--run-dir",
            str(parts),
            "--steps",
            "12",
        ],
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_checkpoint(parts, step=6, process=interrupted)
    interrupted.kill()
    interrupted.wait()
    run_train(*args, "--run-dir", str(parts), "--steps", "12", nproc=2, check=False)
    expected = losses(whole)
    assert len(expected) == 12
    assert losses(parts) == expected


def _wait_for_checkpoint(
    run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 240
) -> None:
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest.exists() and latest.read_text().strip() == f"step_{step:08d}":
            return
        if process.poll() is not None:
            raise AssertionError(f"trainer ended early: {process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} after {timeout}s")


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_matches(tiny_shards, tmp_path):
    args = (
        *TINY,
        "--data",
        str(tiny_shards),
        "--steps",
        "40",
        "--save-every",
        "3",
        "--keep-last",
        "2",
    )
    whole = tmp_path / "whole"
    run_train(*args, "--run-dir", str(whole))
    rng = random.Random(os.getpid())
    for attempt in range(3):  # kill at random moments, saves included, resuming each time
        run_dir = tmp_path / "killed"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train_stage",
                *args,
                "--run-dir",
                str(run_dir),
                "--resume",
                "auto",
            ],
            env=train_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(4.0, 7.0) if attempt == 0 else rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_train(*args, "--run-dir", str(tmp_path / "killed"), "--resume", "auto")
    resumed = losses(tmp_path / "killed")
    assert resumed == losses(whole)
    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert summary["steps"] == 40


@pytest.mark.slow
def test_world_size_two_checkpoint_resumes_in_one_process(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    base = (*TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), "--save-every", "4")
    run_train(*base, "--strategy", "fsdp", "--steps", "4", nproc=2, check=False)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    result = run_train(*base, "--strategy", "none", "--steps", "8")
    assert "resumed from" in result.stdout
    history = losses(run_dir)
    assert sorted(history) == list(range(1, 9))
    # From 2 ranks x 4 rows to 1 rank x 4 rows, the data order goes on where it stopped:
    # 4 steps x 8 rows were consumed, and 4 more single-process steps take 16 rows more.
    meta = json.loads((run_dir / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["tokens_seen"] == 4 * 2 * 4 * 32 + 4 * 4 * 32


def test_resuming_a_finished_run_is_a_clean_no_op(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    args = (*TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), "--steps", "3")
    run_train(*args)
    before = losses(run_dir)
    result = run_train(*args, "--resume", "auto")  # e.g. killed after its last save
    assert "resumed from" in result.stdout and "3 steps" in result.stdout
    assert losses(run_dir) == before
