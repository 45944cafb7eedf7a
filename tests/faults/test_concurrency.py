"""Two writers on one run dir: the second is refused with one line naming the owner's pid and
host, and changes nothing; the first goes on undisturbed."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from eval_stage.cli import main as eval_main
from stage_common.run_lock import OWNER_FILE, RunDirLock
from train_stage.cli import main as train_main

from .helpers import (
    HANG_GUARD_S,
    TRAIN,
    assert_run_intact,
    failure_line,
    losses,
    metrics_lines,
    run_main,
    trainer_process,
    tree_bytes,
    wait_for,
)


def _owner_line() -> str:
    return f"pid {os.getpid()} on host {socket.gethostname()}"


def test_a_second_trainer_is_refused_naming_the_owner(run_copy, shards, capsys):
    with RunDirLock(run_copy, "train_stage"):
        before = tree_bytes(run_copy)
        argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_copy), "--steps", "6"]
        code, _, err = run_main(train_main, argv, capsys)
        assert code == 2
        line = failure_line(err, "train_stage: refused:")
        assert f"{run_copy} is in use by train_stage ({_owner_line()})" in line
        assert tree_bytes(run_copy) == before


def test_a_new_run_dir_being_created_by_another_trainer_is_refused(shards, tmp_path, capsys):
    run_dir = tmp_path / "new"
    with RunDirLock(run_dir, "train_stage"):
        argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir)]
        code, _, err = run_main(train_main, argv, capsys)
        assert code == 2 and _owner_line() in failure_line(err, "train_stage: refused:")
        assert not (run_dir / "config.yaml").exists()


def test_eval_writing_into_a_locked_run_dir_is_refused_and_elsewhere_allowed(
    run_copy, shards, tmp_path, capsys
):
    base = ["perplexity", "--model", str(run_copy), "--data", str(shards), "--max-batches", "1"]
    with RunDirLock(run_copy, "train_stage"):
        code, _, err = run_main(eval_main, base, capsys)  # default output: <run>/eval/...
        assert code == 2 and _owner_line() in failure_line(err, "eval_stage perplexity: error:")
        assert not (run_copy / "eval").exists()
        code, _, err = run_main(eval_main, [*base, "--out", str(tmp_path / "elsewhere")], capsys)
        assert code == 0, err
    code, _, err = run_main(eval_main, base, capsys)  # the trainer is gone: the default is fine
    assert code == 0, err
    assert (run_copy / "eval" / "step_00000004" / "perplexity.json").is_file()


@pytest.mark.slow
def test_two_real_trainers_on_one_run_dir(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = trainer_process(run_dir, shards, "--steps", "100000", "--save-every", "5")
    wait_for(lambda: metrics_lines(run_dir) >= 1, "a first logged step", process=first)
    owner = json.loads((run_dir / OWNER_FILE).read_text())
    assert owner["pid"] == first.pid
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), "--steps", "100000"]
    code, _, err = run_main(train_main, argv, capsys)
    assert code == 2
    assert f"pid {first.pid} on host {socket.gethostname()}" in failure_line(
        err, "train_stage: refused:"
    )
    first.send_signal(signal.SIGTERM)  # the first trainer saves where it is and stops
    assert first.wait(timeout=HANG_GUARD_S) == 143, first.stdout.read()[-2000:]
    history = losses(run_dir)
    assert sorted(history) == list(range(1, len(history) + 1))  # one writer, one history
    assert_run_intact(run_dir)
