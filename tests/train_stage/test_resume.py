"""Exact resume: a run stopped at any point continues as if it never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from train_stage.config import TrainConfig
from train_stage.distributed import torchrun_command
from train_stage.preflight import ConfigError, preflight
from ttt_core import ModelConfig

from .conftest import losses, run_in_process, run_train, train_env

TINY = ("--preset", "debug_tiny", "--no-mlflow", "--seq-len", "32", "--batch-size", "4")


def test_resume_is_bitwise_exact_single_process_even_with_operational_changes(
    tiny_shards, tmp_path, capsys
):
    """The resumed half changes only operational fields (cadences, checkpointing through time):
    it resumes, and the losses are those of the uninterrupted run, bit for bit."""
    common = (*TINY, "--data", str(tiny_shards), "--steps", "16")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_in_process(capsys, *common, "--run-dir", str(whole), "--save-every", "8")
    run_in_process(
        capsys, *common, "--run-dir", str(parts), "--stop-at", "8", "--save-every", "100"
    )
    summary = json.loads((parts / "train_summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["resumed_from_step"]) == (
        "stopped",
        8,
        None,
    )
    operational = ("--save-every", "3", "--keep-last", "1", "--stats-every", "1")
    operational += ("--eval-every", "4", "--eval-batches", "2", "--checkpoint-n-chunks", "2")
    result = run_in_process(
        capsys, *common, "--run-dir", str(parts), "--resume", "auto", *operational
    )
    assert "changed training settings" not in result.stderr
    assert losses(parts) == losses(whole)
    assert len(losses(whole)) == 16
    assert json.loads((parts / "train_summary.json").read_text())["resumed_from_step"] == 8

    # Identity decides what resuming this checkpoint means (checked in process: no training).
    saved = TrainConfig.from_yaml(parts / "config.yaml")
    model = saved.model.model_dump()
    plan = preflight(saved.model_copy(update={"lr": 1e-4}), world=1)
    assert plan.checkpoint == parts / "checkpoints" / "step_00000016"
    assert "changed training settings (lr: 0.003 -> 0.0001)" in capsys.readouterr().err
    other_model = saved.model_copy(update={"model": ModelConfig(**{**model, "eta_base": 0.5})})
    with pytest.raises(ConfigError, match=r"different model config \(differs in eta_base\)"):
        preflight(other_model, world=1)


# LaCT on debug_tiny with chunk and window 8: 4 fast-weight updates per 32-token row, every
# option on (momentum, Muon, low-rank initial weights).
LACT = (
    "--mixer", "lact", "--model.lact-chunk-size", "8", "--model.window-size", "8",
    "--model.lact-heads", "2", "--model.lact-low-rank", "4", "--model.lact-muon",
)  # fmt: skip
# TTT-E2E on debug_tiny: one suffix block, chunk 8 (3 inner steps per 32-token row, trained
# through), the inner-lr warm-up over the first 2 of 12 steps.
E2E = (
    "--mixer", "swa", "--model.window-size", "8", "--model.e2e-suffix-layers", "1",
    "--model.e2e-chunk-size", "8", "--model.e2e-prime-hidden", "32",
    "--e2e-inner-lr-warmup", "0.2",
)  # fmt: skip
MIXER_FLAGS = {"ttt_linear": (), "lact": LACT, "e2e": E2E}


@pytest.mark.slow
@pytest.mark.parametrize("mixer", sorted(MIXER_FLAGS))
def test_resume_is_bitwise_exact_under_fsdp_with_two_processes(tiny_shards, tmp_path, mixer):
    args = (*TINY, "--strategy", "fsdp", "--data", str(tiny_shards), "--save-every", "6")
    args += MIXER_FLAGS[mixer]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_train(*args, "--run-dir", str(whole), "--steps", "12", nproc=2)
    log = tmp_path / "interrupted.log"
    with open(log, "w") as sink:
        interrupted = subprocess.Popen(
            torchrun_command(2, "train_stage", [*args, "--run-dir", str(parts), "--steps", "12"]),
            env=train_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the kill takes launcher and ranks at once
        )
        latest = parts / "checkpoints" / "latest"
        while not latest.exists() and interrupted.poll() is None:  # placed on the first save
            time.sleep(0.01)
        assert interrupted.poll() is None, f"trainer ended early: {log.read_text()[-3000:]}"
        os.killpg(interrupted.pid, signal.SIGKILL)
        interrupted.wait()
    print(f"SIGKILLed with latest = {latest.read_text().strip()}")
    run_train(*args, "--run-dir", str(parts), "--steps", "12", nproc=2)
    expected = losses(whole)
    assert len(expected) == 12
    assert losses(parts) == expected


@pytest.mark.slow
def test_sigkill_at_random_steps_and_mid_save_then_resume_matches(
    tiny_shards, tmp_path, rng, capsys
):
    """SIGKILL three times, resuming each time: after a random logged step, as soon as a save's
    temporary directory is seen, after a later random step. Kills are placed on these observed
    events, not on elapsed time; `rng` prints its seed. Only the killed trainers are processes
    of their own."""
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
    whole, run_dir = tmp_path / "whole", tmp_path / "killed"
    run_in_process(capsys, *args, "--run-dir", str(whole))
    metrics, checkpoints = run_dir / "metrics.jsonl", run_dir / "checkpoints"

    def logged(step: int):
        def event() -> bool:
            text = metrics.read_text() if metrics.is_file() else ""
            complete = text[: text.rfind("\n") + 1].splitlines()  # not a line being written
            return bool(complete) and json.loads(complete[-1])["step"] >= step

        return event

    def saving() -> bool:
        return any(checkpoints.glob(".tmp-step_*"))

    first, last = rng.randint(2, 12), rng.randint(25, 37)
    kills = [f"kills after steps {first} and {last} (rng from the header's seed)"]
    for name, event in (("step", logged(first)), ("save", saving), ("step", logged(last))):
        proc = subprocess.Popen(
            [sys.executable, "-m", "train_stage", *args, "--run-dir", str(run_dir)],
            env=train_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not event() and proc.poll() is None:
            time.sleep(0.002)
        ended = proc.poll()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(
            f"kill on {name} event: "
            + (f"trainer had ended ({ended})" if ended is not None else "landed")
        )
        assert ended is None or name == "save", f"the trainer ended (exit {ended}) before step"
    run_in_process(capsys, *args, "--run-dir", str(run_dir), "--resume", "auto")
    print("\n".join(kills))  # after the in-process runs, which read (and drop) what came before
    assert losses(run_dir) == losses(whole)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == 40 and summary["resumed_from_step"] is not None


@pytest.mark.slow
def test_world_size_two_checkpoint_resumes_in_one_process(tiny_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = (*TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), "--save-every", "4")
    run_train(*base, "--strategy", "fsdp", "--steps", "4", nproc=2)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    result = run_in_process(capsys, *base, "--strategy", "none", "--steps", "8")
    assert "resumed from" in result.stdout
    history = losses(run_dir)
    assert sorted(history) == list(range(1, 9))
    # From 2 ranks x 4 rows to 1 rank x 4 rows, the data order goes on where it stopped:
    # 4 steps x 8 rows were consumed, and 4 more single-process steps take 16 rows more.
    meta = json.loads((run_dir / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["tokens_seen"] == 4 * 2 * 4 * 32 + 4 * 4 * 32


def test_resuming_a_finished_run_is_a_clean_no_op(tiny_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = (*TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), "--steps", "3")
    run_in_process(capsys, *args)
    before = losses(run_dir)
    result = run_in_process(capsys, *args, "--resume", "auto")  # e.g. killed after its last save
    assert "resumed from" in result.stdout and "3 steps" in result.stdout
    assert losses(run_dir) == before
