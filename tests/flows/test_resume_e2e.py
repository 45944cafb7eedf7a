"""A training worker SIGKILLed mid-run: the train task's retry resumes from the latest
checkpoint and the bring-up ends with exactly the loss of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows.request import BringupRequest, resolve
from tests.flows.helpers import kill_after_step, uninterrupted_final_loss
from tests.helpers import HANG_GUARD_S
from ttt_core import parse_assignments


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_loss(tmp_path):
    sets = ["train.steps=40", "train.save_every=10", "evals=[perplexity]"]
    cfg = resolve(BringupRequest(preset="debug_tiny", overrides=parse_assignments(sets)), tmp_path)
    command = [sys.executable, "-m", "flows", "run", "--preset", "debug_tiny",
               "--run-root", str(tmp_path)] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    log = tmp_path / "flow.log"
    with open(log, "w") as sink:  # a file, not a pipe: nobody reads while the kill is placed
        flow = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            kill = kill_after_step(cfg.stage_dir("train"), 15, lambda pids: pids["workers"])
            flow.wait(timeout=HANG_GUARD_S)
        finally:
            flow.kill()  # a no-op once it has exited
            flow.wait()
    out = log.read_text()
    assert flow.returncode == 0, out[-3000:]
    assert "exit code -9" in out  # the first attempt failed with the worker's signal
    assert "resumed from" in out

    record = json.loads((cfg.run_dir / "bringup.json").read_text())
    assert record["status"] == "completed"
    resumed = record["outputs"]["train"]
    assert resumed["steps"] == 40
    # A SIGKILLed worker saves nothing: the retry resumed from the last periodic checkpoint
    # before the kill landed, whichever step that was on this machine.
    assert kill.checkpoint % 10 == 0 and 10 <= kill.checkpoint <= kill.last_logged
    assert kill.last_logged >= kill.sent_at_step >= 15
    assert resumed["resumed_from_step"] == kill.checkpoint
    assert resumed["final_loss"] == uninterrupted_final_loss(cfg, tmp_path / "reference")
