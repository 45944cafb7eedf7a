"""`python -m flows sweep`: refusals before any work, and a 2-point debug_tiny sweep end to end
(shared data, same seed and first batch, sorted outputs, the study continued by a rerun with a
stopped point resumed from its checkpoint, no retraining of a finished one by another study)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flows.cli import main as flows_main
from flows.sweep import main as sweep_main

SMALL = ["--preset", "debug_tiny", "--set", "train.steps=3"]


@pytest.mark.parametrize(
    ("grid", "extra", "named"),
    [
        (["train.bogus=1,2"], [], "bogus"),
        (["train.lr=-1,1e-3"], [], "lr"),
        (["train.lr=abc"], [], "lr"),
        (["vocab_size=256,512"], [], "vocab_size"),
        (["mixer=attention,none"], [], "mixer"),
        (["train.batch_size=2,4"], [], "validation rows"),
        (["train.seq_len=16,32"], [], "validation rows"),
        (["train.lr=1e-3,1e-3"], [], "repeated"),
        (["train.resume=a/b,a b"], [], "both named"),
        (["train.lr=1e-3", "train.lr=3e-3"], [], "twice"),
        (["train.lr"], [], "KEY=V1,V2"),
        (["train.lr=1e-3"], ["--set", "train.lr=3e-3"], "both"),
        (["train.lr=1e-3"], ["--set", "nokey"], "KEY=VALUE"),
        (["train.lr=1e-3"], ["--set", "run_root=/x"], "run_root"),
        ([], [], "at least one"),
        (["train.lr=1e-3"], ["--range", "train.lr=1e-4..1e-2", "--sampler", "tpe"], "both"),
        ([], ["--range", "train.lr=1e-4..1e-2"], "needs --sampler tpe"),
        ([], ["--range", "train.lr=1e-4..1e-2", "--sampler", "tpe"], "--trials"),
        (["train.lr=1e-3"], ["--trials", "3"], "--trials is for"),
        ([], ["--range", "train.lr=1e-2..1e-4", "--sampler", "tpe", "--trials", "2"], "low < high"),
        ([], ["--range", "train.lr=0..1e-2:log", "--sampler", "tpe", "--trials", "2"], "low > 0"),
        ([], ["--range", "train.lr=nan..1", "--sampler", "tpe", "--trials", "2"], "finite"),
        ([], ["--range", "train.lr=1e-4-1e-2", "--sampler", "tpe", "--trials", "2"], "LOW..HIGH"),
        ([], ["--range", "train.steps=1..8.5:int", "--sampler", "tpe", "--trials", "2"], "whole"),
        ([], ["--range", "train.lr=-1..1", "--sampler", "tpe", "--trials", "2"], "lr"),
        (
            [],
            ["--range", "train.batch_size=1..4:int", "--sampler", "tpe", "--trials", "2"],
            "validation rows",
        ),
        (["train.lr=1e-3"], ["--concurrency", "0"], "concurrency"),
    ],
)
def test_bad_grids_are_refused_in_one_line_before_any_work(grid, extra, named, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [*SMALL, *extra, *(a for g in grid for a in ("--grid", g)), "--out", str(out)]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not out.exists()


def test_an_out_dir_that_is_no_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert sweep_main([*SMALL, "--grid", "train.lr=1e-3", "--out", str(out)]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_flows_cli_registers_the_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert flows_main(["sweep", *SMALL, "--grid", "train.nope=1", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()


def test_data_without_validation_rows_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "sweep"
    tiny = ["--set", "corpus.max_bytes=200000"]  # too little text for one val row
    assert sweep_main([*SMALL, *tiny, "--grid", "train.lr=1e-3,3e-3", "--out", str(out)]) == 2
    assert "no validation rows" in capsys.readouterr().err
    assert not (out / "points").exists()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"ranges": {"train.lr": "1e-2"}, "sampler": "tpe", "trials": 2}, "range 'train.lr'"),
        ({"grid": {"train.lr": [1e-3]}, "sampler": "tpe"}, "--trials"),
        ({"grid": {"vocab_size": [256]}}, "only train.*"),
        ({"grid": {"train.lr": []}}, "no values"),
        ({}, "at least one"),
        ({"grid": {"train.lr": [1e-3]}, "name": "../elsewhere"}, "name '../elsewhere'"),
        ({"grid": {"train.lr": [1e-3]}, "concurrency": 0}, "concurrency must be"),
    ],
)
def test_the_sweep_flow_refuses_a_bad_search_before_any_work(params, named, tmp_path, monkeypatch):
    from flows.env import RUN_ROOT_ENV
    from flows.search import SweepError
    from flows.sweep_flow import sweep

    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path))
    with pytest.raises(SweepError, match=re.escape(named)):
        sweep.fn(preset="debug_tiny", **params)
    assert list(tmp_path.iterdir()) == []


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_two_point_sweep_trains_resumes_and_ranks(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "train.lr=1e-3,1e-2", "--out", str(out)]
    # First run stops every point at step 2 (a time-boxed sweep): nothing ranked yet.
    assert sweep_main([*SMALL, "--set", "train.stop_at=2", *grid]) == 1
    stopped = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["status"] for p in stopped] == ["stopped", "stopped"]
    assert all(p["val_loss"] is None for p in stopped)
    capsys.readouterr()

    # The same sweep without stop_at continues its study: both points resume from step 2.
    assert sweep_main([*SMALL, *grid]) == 0
    log = capsys.readouterr().out
    assert "data: reusing" in log and log.count(": started") == 2
    result = json.loads((out / "sweep.json").read_text())
    assert result["sampler"] == "grid" and result["study"].startswith("sweep-")
    points = result["points"]
    assert [p["status"] for p in points] == ["completed", "completed"]
    assert sorted(p["trial"] for p in points) == [2, 3]  # trials 0 and 1 were the stopped ones
    assert all(p["resumed_from_step"] == 2 and p["steps"] == 3 for p in points)
    losses = [p["val_loss"] for p in points]
    assert losses == sorted(losses)
    assert {p["params"]["train.lr"] for p in points} == {1e-3, 1e-2}
    for p in points:
        run_dir = out / "points" / p["name"]
        summary = json.loads((run_dir / "train_summary.json").read_text())
        assert p["val_loss"] == summary["val_loss"]
        assert p["tokens_per_s"] > 0 and p["wall_s"] > 0
    # Same data, seed and first batch: the loss before the first update is the same.
    first = [metrics(out / "points" / p["name"])[0] for p in points]
    assert first[0]["step"] == first[1]["step"] == 1
    assert first[0]["loss"] == first[1]["loss"]
    table = (out / "sweep.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| 0.0")]
    assert [float(r.split("|")[2]) for r in rows] == [round(v, 4) for v in losses]
    assert (out / "sweep.png").stat().st_size > 0

    # The finished study runs nothing more.
    before = {p["name"]: metrics(out / "points" / p["name"]) for p in points}
    assert sweep_main([*SMALL, *grid]) == 0
    assert "every one of the 2 trials has finished" in capsys.readouterr().out

    # Another study (a third lr) reads the two finished points back instead of retraining them.
    wider = ["--grid", "train.lr=1e-3,1e-2,3e-3", "--out", str(out)]
    assert sweep_main([*SMALL, *wider]) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier") == 2 and log.count(": started") == 1
    assert before == {p["name"]: metrics(out / "points" / p["name"]) for p in points}
    assert len(json.loads((out / "sweep.json").read_text())["points"]) == 3
