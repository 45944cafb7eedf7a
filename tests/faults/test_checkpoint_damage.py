"""Damaged checkpoints: `--resume auto` and evaluation fall back to the newest intact one and
say which they skipped and why; `--resume PATH` to a damaged one is refused; older checkpoints
without checksums still load, reported as unverified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_stage.cli import main as eval_main
from train_stage.checkpoint import CHECKSUMS, META
from train_stage.cli import main as train_main

from .helpers import (
    TRAIN,
    assert_run_intact,
    failure_line,
    flip_byte,
    latest_name,
    losses,
    run_main,
    tree_bytes,
)

STEP2, STEP4 = "step_00000002", "step_00000004"


def _damage_distcp(checkpoint: Path) -> str:
    shard = next(checkpoint.glob("*.distcp"))
    flip_byte(shard)
    return shard.name


def _remove_meta(checkpoint: Path) -> str:
    (checkpoint / META).unlink()
    return META


def _garble_meta(checkpoint: Path) -> str:
    (checkpoint / META).write_text('{"step": 4, "tokens_')
    return META


def _remove_distcp(checkpoint: Path) -> str:
    shard = next(checkpoint.glob("*.distcp"))
    shard.unlink()
    return shard.name


def _remove_metadata(checkpoint: Path) -> str:
    (checkpoint / ".metadata").unlink()
    return ".metadata"


DAMAGES = [_damage_distcp, _remove_meta, _garble_meta, _remove_distcp, _remove_metadata]


def _train(run_dir: Path, shards: Path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *extra]
    return run_main(train_main, argv, capsys)


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_resume_auto_skips_a_damaged_newest_checkpoint_and_says_so(
    run_copy, trained_run, shards, capsys, damage
):
    damaged = damage(run_copy / "checkpoints" / STEP4)
    code, out, err = _train(run_copy, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert "Traceback" not in err
    skipped = [line for line in err.splitlines() if f"skipped checkpoint {STEP4}" in line]
    assert len(skipped) == 1 and damaged in skipped[0], err
    assert f"using {STEP2}" in err and f"resumed from {run_copy / 'checkpoints' / STEP2}" in out
    # Steps 3 and 4 were trained again, exactly as the first time; the damaged copy was replaced.
    assert losses(run_copy) == losses(trained_run)
    assert latest_name(run_copy) == STEP4
    assert_run_intact(run_copy)


def test_resume_path_to_a_damaged_checkpoint_is_refused_and_nothing_changes(
    run_copy, shards, capsys
):
    _damage_distcp(run_copy / "checkpoints" / STEP4)
    before = tree_bytes(run_copy)
    target = run_copy / "checkpoints" / STEP4
    code, _, err = _train(run_copy, shards, capsys, "--resume", str(target), "--steps", "6")
    assert code == 2
    line = failure_line(err, "train_stage: refused:")
    assert str(target) in line and "does not match checksums.json" in line
    assert tree_bytes(run_copy) == before


def test_no_intact_checkpoint_is_refused_naming_each(run_copy, shards, capsys):
    for name in (STEP2, STEP4):
        _damage_distcp(run_copy / "checkpoints" / name)
    before = tree_bytes(run_copy)
    code, _, err = _train(run_copy, shards, capsys, "--resume", "auto")
    assert code == 2
    line = failure_line(err, "train_stage: refused:")
    assert "no intact checkpoint" in line and STEP2 in line and STEP4 in line
    assert tree_bytes(run_copy) == before


def test_a_garbled_latest_pointer_falls_back_to_the_step_directories(
    run_copy, trained_run, shards, capsys
):
    (run_copy / "checkpoints" / "latest").write_bytes(b"\xff\x00garbage")
    code, out, err = _train(run_copy, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert "names no checkpoint directory" in err and f"step {4}" in out
    assert losses(run_copy) == losses(trained_run)
    assert_run_intact(run_copy)


def test_a_checkpoint_without_checksums_still_resumes_reported_unverified(run_copy, shards, capsys):
    """What the previous train_stage wrote: no checksums.json, no `format` in meta.json."""
    for name in (STEP2, STEP4):
        checkpoint = run_copy / "checkpoints" / name
        (checkpoint / CHECKSUMS).unlink()
        meta = json.loads((checkpoint / META).read_text())
        del meta["format"], meta["data"]
        (checkpoint / META).write_text(json.dumps(meta))
    code, out, err = _train(run_copy, shards, capsys, "--resume", "auto", "--steps", "6")
    assert code == 0, err
    assert f"{STEP4} has no checksums" in err and "unverified" in err
    assert "resumed from" in out and sorted(losses(run_copy)) == list(range(1, 7))


def test_eval_of_a_run_skips_its_damaged_latest_checkpoint_and_says_so(
    run_copy, shards, tmp_path, capsys
):
    _remove_meta(run_copy / "checkpoints" / STEP4)
    out_dir = tmp_path / "eval"
    argv = ["perplexity", "--model", str(run_copy), "--data", str(shards), "--max-batches", "1",
            "--out", str(out_dir)]  # fmt: skip
    code, _, err = run_main(eval_main, argv, capsys)
    assert code == 0, err
    assert f"skipped checkpoint {STEP4}" in err and META in err
    result = json.loads((out_dir / "perplexity.json").read_text())
    assert result["models"][0]["step"] == 2


def test_eval_of_a_run_with_no_intact_checkpoint_is_one_line_exit_2(
    run_copy, shards, tmp_path, capsys
):
    for name in (STEP2, STEP4):
        _damage_distcp(run_copy / "checkpoints" / name)
    argv = ["perplexity", "--model", str(run_copy), "--data", str(shards), "--out",
            str(tmp_path / "eval")]  # fmt: skip
    code, _, err = run_main(eval_main, argv, capsys)
    assert code == 2
    assert "no intact checkpoint" in failure_line(err, "eval_stage perplexity: error:")
    assert not (tmp_path / "eval").exists()
