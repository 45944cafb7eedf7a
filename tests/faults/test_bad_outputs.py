"""Outputs that cannot be written (a file where a directory should be, or above it): refused
before any work, one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_stage.__main__ import main as data_main
from eval_stage.cli import main as eval_main
from train_stage.cli import main as train_main

from .helpers import TRAIN, failure_line, run_main, tree_bytes

COMMANDS = {
    "train": (train_main, "train_stage: refused:",
              [*TRAIN, "--data", "{shards}", "--run-dir", "{out}"]),
    "shards": (data_main, "data_stage shards: error:",
               ["shards", "--tokenizer", "{tokenizer}", "--seq-len", "16", "--out", "{out}",
                "--corpus-format", "stdlib", "--max-bytes", "10000"]),
    "tokenizer": (data_main, "data_stage tokenizer: error:",
                  ["tokenizer", "--vocab-size", "512", "--out", "{out}", "--max-bytes", "10000"]),
    "perplexity": (eval_main, "eval_stage perplexity: error:",
                   ["perplexity", "--model", "{run}", "--data", "{shards}", "--out", "{out}"]),
}  # fmt: skip


@pytest.mark.parametrize("where", ["a file", "under a file"])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_output_is_refused_before_any_work(
    command, where, shards, tokenizer, trained_run, tmp_path, capsys
):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file the user cares about\n")
    out = blocker if where == "a file" else blocker / "out"
    main, prog, template = COMMANDS[command]
    fill = {"shards": shards, "tokenizer": tokenizer, "run": trained_run, "out": out}
    before = tree_bytes(tmp_path)
    code, _, err = run_main(main, [str(a).format(**fill) for a in template], capsys)
    assert code == 2
    assert str(blocker) in failure_line(err, prog)
    assert tree_bytes(tmp_path) == before


def test_a_run_dir_that_cannot_be_created_is_refused(shards, capsys):
    run_dir = Path("/proc/no-such-run")  # a directory no one can create, even root
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir)]
    code, _, err = run_main(train_main, argv, capsys)
    assert code == 2 and "cannot be a run directory" in failure_line(err, "train_stage: refused:")
