"""compare: runs side by side from the results they wrote; refusals before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_stage import EvalInputError, read_result
from eval_stage.compare import compare_runs, markdown, rows_of

from .helpers import run_cli

EVAL_FLAGS = {
    "perplexity": ["--max-batches", "2", "--batch-size", "4"],
    "position-loss": ["--multipliers", "1", "2", "--sequences", "4", "--n-buckets", "4"],
    "latency": ["--contexts", "8", "16", "--decode-tokens", "2", "--repeats", "1"],
}


def evaluated_run(root: Path, model: Path, shards: Path) -> Path:
    """A bring-up-like folder whose `eval/` holds perplexity, position-loss and latency results."""
    for name, flags in EVAL_FLAGS.items():
        data = [] if name == "latency" else ["--data", str(shards)]
        argv = [name, "--model", str(model), "--device", "cpu", "--out", str(root / "eval")]
        assert run_cli(argv + data + flags) == 0
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir: Path, baseline_dir: Path, shard_dir: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    return [
        evaluated_run(root / "ttt", model_dir, shard_dir),
        evaluated_run(root / "attn", baseline_dir, shard_dir),
    ]


def test_compare_reports_each_runs_own_numbers(runs: list[Path], tmp_path: Path) -> None:
    assert run_cli(["compare", *map(str, runs), "--out", str(tmp_path)]) == 0
    result = read_result(tmp_path / "compare.json")
    rows = rows_of(result)
    assert [r.name for r in rows] == ["ttt_linear", "attention"]
    for row, run in zip(rows, runs, strict=True):
        ppl = read_result(run / "eval" / "perplexity.json")
        assert row.val_loss == ppl.metrics["perplexity/model/loss"]
        position = read_result(run / "eval" / "position_loss.json")
        train_len = position.config["train_len"]
        assert row.loss_at == {
            str(m): position.metrics[f"position_loss/model/len_{m * train_len}/mean_loss"]
            for m in (1, 2)
        }
        assert row.decode_context == 16
    expected = 100 * (rows[1].val_loss - rows[0].val_loss) / rows[0].val_loss
    assert rows[1].val_loss_vs_reference_pct == pytest.approx(expected)
    assert rows[0].val_loss_vs_reference_pct is None
    assert result.metrics["compare/attention/val_loss"] == rows[1].val_loss
    # the figure is redrawn from the result alone: its curves are the runs' model rows
    assert {r["name"] for r in result.tables["position_loss"]} == {"ttt_linear", "attention"}
    assert result.plots == ["compare.png"] and (tmp_path / "compare.png").stat().st_size > 0
    table = (tmp_path / "compare.md").read_text()
    assert "| ttt_linear |" in table and "| attention |" in table and "reference" in table


def test_two_runs_of_one_mixer_are_told_apart(runs: list[Path], tmp_path: Path) -> None:
    copies = [shutil.copytree(runs[0], tmp_path / name / "ttt") for name in ("a", "b")]
    rows = rows_of(compare_runs([runs[0], *copies]))
    assert [r.name for r in rows] == ["ttt_linear #1", "ttt_linear #2", "ttt_linear #3"]
    rows = rows_of(compare_runs([runs[0], shutil.copytree(runs[0], tmp_path / "other")]))
    assert [r.name for r in rows] == ["ttt_linear (ttt)", "ttt_linear (other)"]
    assert "| ttt_linear (other) |" in markdown(compare_runs([runs[0], tmp_path / "other"]))


def test_a_run_given_twice_is_refused(runs: list[Path]) -> None:
    with pytest.raises(EvalInputError, match="given twice"):
        compare_runs([runs[0], runs[1], runs[0]])


def test_refusals_are_one_line_before_any_work(runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli(["compare", str(runs[0]), "--out", str(out)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["compare", str(runs[0]), str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_runs_on_different_val_data_are_refused(runs: list[Path], tmp_path: Path, capsys) -> None:
    """A run whose perplexity read other val shards (another manifest) is not comparable."""
    other_shards = tmp_path / "shards"
    ppl = read_result(runs[1] / "eval" / "perplexity.json")
    shutil.copytree(ppl.config["data"], other_shards)
    manifest = json.loads((other_shards / "manifest.json").read_text())
    manifest["val"]["shards"][0]["sha256"] = "0" * 64
    (other_shards / "manifest.json").write_text(json.dumps(manifest))
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    moved = ppl.model_copy(update={"config": {**ppl.config, "data": str(other_shards)}})
    (other / "eval" / "perplexity.json").write_text(moved.model_dump_json())
    assert run_cli(["compare", str(runs[0]), str(other), "--out", str(tmp_path / "o")]) == 2
    assert "different val data" in capsys.readouterr().err
