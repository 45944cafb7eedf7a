"""`python -m flows long-context` end to end at debug_tiny scale, from another directory: one seed
of attention (the reference) and TTT-Linear, each pretrained, extended and compared, the
extension's MLflow run nested and linked; how seeds are requested and combined, without
training. (Every family's long-context eval: tests/eval_stage/test_long_context.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from eval_stage import EvalInputError
from eval_stage.long_context import LongContextModel, LongContextResult, LongContextRow
from eval_stage.long_context_seeds import combine_seeds
from eval_stage.results import DeviceInfo
from flows.long_context import seed_requests
from flows.request import InvalidRequest

SETS = [
    "train.steps=6",
    "extend_seq_len=128",
    "extend.steps=3",
    "extend.batch_size=2",
    "evals=[perplexity]",
    "long_context={lengths: [64, 128, 256], sequences: 2, niah_trials: 1, niah_depths: [0.5], "
    "decode_tokens: 2, bootstrap_samples: 100}",
]


@pytest.mark.slow
def test_a_seed_pretrains_extends_and_compares(tmp_path):
    run_root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "flows", "long-context", "--preset", "debug_tiny",
               "--seeds", "3", "--families", "ttt_linear",
               "--run-root", str(run_root)] + [a for s in SETS for a in ("--set", s)]  # fmt: skip
    done = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert '"state": "Completed"' in done.stdout

    seeds = json.loads((run_root / "debug_tiny-seeds" / "long_context_seeds.json").read_text())
    assert seeds["reference"] == "attention" and seeds["lengths"] == [64, 128, 256]
    rows = {(r["model"], r["length"]): r for r in seeds["rows"]}
    assert set(rows) == {(m, L) for m in ("attention", "ttt_linear") for L in (64, 128, 256)}
    run = run_root / "debug_tiny-seed3"
    result = json.loads((run / "long_context" / "long_context.json").read_text())
    for model in ("attention", "ttt_linear"):
        row = rows[(model, 256)]
        assert [s["seed"] for s in row["seeds"]] == [3]
        assert row["diff_mean"] == next(
            r["loss_diff_vs_reference"] for r in result["rows"]
            if r["model"] == model and r["length"] == 256
        )  # fmt: skip
    assert "verdict" in (run_root / "debug_tiny-seeds" / "long_context_seeds.md").read_text()
    assert [m["name"] for m in result["models"]] == ["attention", "ttt_linear"]
    # every model is the extended one: trained at 128 after 64
    assert {m["train_seq_len"] for m in result["models"]} == {128}
    assert (run / "controls" / "ttt_linear" / "extend_export" / "config.json").is_file()
    record = json.loads((run / "bringup.json").read_text())
    assert record["status"] == "completed"
    assert {"extend", "long_context"} <= set(record["outputs"])
    assert "extend.train" in record["commands"] and "long_context" in record["commands"]

    client = MlflowClient(tracking_uri=f"sqlite:///{run_root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("bringup").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    extension = by_name["debug_tiny-seed3/extend/train"]
    source = by_name["debug_tiny-seed3/train"]
    assert extension.data.tags["mlflow.parentRunId"] == source.data.tags["mlflow.parentRunId"]
    assert extension.data.tags["init_from_run_id"] == source.info.run_id
    parent = client.get_run(extension.data.tags["mlflow.parentRunId"])
    assert "long_context/ttt_linear/len_256/loss_diff_vs_reference" in parent.data.metrics


def test_requests_refuse_what_the_flow_sets_and_presets_without_the_comparison(tmp_path,
                                                                               monkeypatch):  # fmt: skip
    monkeypatch.setenv("FLOWS_RUN_ROOT", str(tmp_path))
    with pytest.raises(InvalidRequest, match="sets no extension"):
        seed_requests("debug_tiny", [0], "attention", None)
    with pytest.raises(InvalidRequest, match="distinct"):
        seed_requests("long_context_cpu", [0, 0], "attention", None)
    with pytest.raises(InvalidRequest, match=r"train\.seed"):
        seed_requests("long_context_cpu", [0], "attention", None, {"train.seed": 3})
    first, second = seed_requests("long_context_cpu", [3, 4], "attention", ["ttt_linear", "e2e"])
    assert first.overrides == {"controls": ["ttt_linear", "e2e"], "train.seed": 3,
                               "run_name": "long_context_cpu-seed3"}  # fmt: skip
    assert second.overrides["data_from"] == str(tmp_path.resolve() / "long_context_cpu-seed3")


def _result(seed_diffs: dict[str, tuple[float, float, float]]) -> LongContextResult:
    """A long-context result at one length: model -> (diff, lo, hi); `ref` is the reference."""
    device = DeviceInfo(type="cpu", name="x", threads=1, torch_version="t")
    same = {"length": 64, "sequences": 2, "loss_ci95": (3, 5), "niah_accuracy": None,
            "niah_ci95": None, "niah_cases": 0, "state_bytes": 1, "decode_ms_per_token": 1.0,
            "decode_ms_median": 1.0, "peak_rss_mb": 1.0}  # fmt: skip
    rows = [
        LongContextRow(
            model=m, mixer=m, loss=4.0 + d, loss_diff_vs_reference=d, diff_ci95=(lo, hi), **same
        )
        for m, (d, lo, hi) in seed_diffs.items()
    ]
    models = [LongContextModel(name=m, source=m, mixer=m, num_params=1, rope_theta=1e4)
              for m in seed_diffs]  # fmt: skip
    return LongContextResult(device=device, reference="ref", lengths=[64], niah_chance=None,
                             models=models, config={}, rows=rows)  # fmt: skip


def test_seeds_combine_into_mean_range_and_a_verdict_every_seed_supports():
    zero = (0.0, 0.0, 0.0)
    results = {
        0: _result({"ref": zero, "a": (-0.3, -0.4, -0.2), "b": (-0.1, -0.2, 0.05)}),
        1: _result({"ref": zero, "a": (-0.1, -0.15, -0.05), "b": (-0.2, -0.3, -0.1)}),
    }
    summary = combine_seeds(results, ["s0", "s1"])
    rows = {r.model: r for r in summary.rows}
    assert rows["a"].diff_mean == pytest.approx(-0.2)
    assert (rows["a"].diff_min, rows["a"].diff_max) == (-0.3, -0.1)
    assert rows["a"].supported == -1  # below 0 in both seeds' intervals
    assert rows["b"].supported == 0  # seed 0's interval includes 0
    assert rows["ref"].supported == 0 and rows["ref"].diff_max == 0
    with pytest.raises(EvalInputError, match="other models or lengths"):
        combine_seeds({0: results[0], 1: _result({"ref": zero, "a": zero})}, ["s0", "s1"])
