"""The run's own records: a refused resume changes nothing (config.yaml included), a partial last
line of metrics.jsonl is repaired with a message, a damaged earlier line is refused, and temps
left by an interrupted run are removed at startup even when the run is then refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_stage.cli import main as eval_main
from train_stage.cli import main as train_main
from train_stage.config import TrainConfig

from .helpers import TRAIN, assert_run_intact, failure_line, losses, run_main, tree_bytes


def _train(run_dir: Path, shards: Path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *extra]
    return run_main(train_main, argv, capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--seed", "7"), "trained with --seed 0, not 7"),
        (("--mixer", "attention"), "different model config (differs in mixer)"),
        (("--steps", "6", "--data", "{other}"), "trained on other data"),
    ],
)
def test_a_refused_resume_writes_nothing(run_copy, shards, other_shards, capsys, extra, message):
    before = tree_bytes(run_copy)
    extra = [a.format(other=other_shards) for a in extra]
    code, _, err = _train(run_copy, shards, capsys, *extra)
    assert code == 2
    assert message in failure_line(err, "train_stage: refused:")
    assert (
        tree_bytes(run_copy) == before
    )  # config.yaml, metrics.jsonl, checkpoints: all as they were


def test_a_partial_last_metrics_line_is_dropped_with_a_message(
    run_copy, trained_run, shards, capsys
):
    metrics = run_copy / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 3.1')  # a kill in the middle of a write
    code, _, err = _train(run_copy, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert "dropping a partial last line" in err and str(metrics) in err
    assert losses(run_copy) == losses(trained_run)
    assert_run_intact(run_copy)


def test_a_damaged_earlier_metrics_line_is_refused_naming_it(run_copy, shards, capsys):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:10]
    metrics.write_text("\n".join(lines) + "\n")
    before = tree_bytes(run_copy)
    code, _, err = _train(run_copy, shards, capsys, "--resume", "auto", "--steps", "6")
    assert code == 2
    assert "line 2 is not a JSON object" in failure_line(err, "train_stage: refused:")
    assert tree_bytes(run_copy) == before


def test_stale_temps_are_removed_at_startup_even_when_the_run_is_then_refused(
    run_copy, shards, capsys
):
    stale_dir = run_copy / "checkpoints" / ".tmp-step_00000006"
    stale_dir.mkdir()
    (stale_dir / "__0_0.distcp").write_bytes(b"\0" * 1000)
    stale_file = run_copy / ".tmp-config.yaml.12345"
    stale_file.write_text("half")
    code, _, err = _train(run_copy, shards, capsys, "--seed", "3")
    assert code == 2 and "--seed" in failure_line(err, "train_stage: refused:")
    assert not stale_dir.exists() and not stale_file.exists()
    assert f"removed {stale_dir}" in err
    assert_run_intact(run_copy)


def test_a_refused_fresh_run_leaves_no_run_dir(shards, tmp_path, capsys):
    run_dir = tmp_path / "new"
    code, _, err = _train(run_dir, shards, capsys, "--seq-len", "999")
    assert code == 2 and "longer than the shards" in failure_line(err, "train_stage: refused:")
    assert not run_dir.exists()


def test_a_garbled_config_yaml_is_one_line_for_eval_and_rewritten_by_a_resume(
    run_copy, shards, tmp_path, capsys
):
    (run_copy / "config.yaml").write_text("model: [\n")
    argv = ["perplexity", "--model", str(run_copy), "--data", str(shards), "--out",
            str(tmp_path / "eval")]  # fmt: skip
    code, _, err = run_main(eval_main, argv, capsys)
    assert code == 2 and "config.yaml" in failure_line(err, "eval_stage perplexity: error:")
    assert not (tmp_path / "eval").exists()
    code, _, err = _train(run_copy, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert TrainConfig.from_yaml(run_copy / "config.yaml").run_dir == run_copy
