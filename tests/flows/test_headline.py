"""Headline metrics, the parent run's params and the one-screen summary."""

from pathlib import Path
from urllib.parse import parse_qs

import pytest
from mlflow import MlflowClient

from eval_stage import bench, latency, niah, perplexity, position_loss
from eval_stage.results import metric_key
from flows.bringup import STAGES, stages_for
from flows.config import PipelineConfig
from flows.env import UI_ENV
from flows.headline import (
    comparison,
    headline,
    headline_rows,
    identity,
    summary_lines,
    summary_markdown,
)
from flows.links import runs_table_url
from flows.request import BringupRequest, resolve
from flows.tracking import KIND_TAG, Tracking


def eval_outputs(role: str, scale: float) -> dict:
    """`outputs["evaluate"]` as `Bringup.evaluate` records it, with the eval modules' own keys."""

    def at(module, *parts):
        return metric_key(module.EVAL, role, *parts)

    return {
        "perplexity": {
            "metrics": {
                at(perplexity, "loss"): 3.4 * scale,
                at(perplexity, "loss_lo"): 3.3 * scale,
                at(perplexity, "loss_hi"): 3.5 * scale,
                at(perplexity, "perplexity"): 30.0 * scale,
            }
        },
        "position_loss": {
            "metrics": {
                at(position_loss, "len_64", "last_bucket_loss"): 9.0,
                at(position_loss, "len_128", "last_bucket_loss"): 4.0 * scale,
                at(position_loss, "len_64", "mean_loss"): 5.0 * scale,
                at(position_loss, "len_128", "mean_loss"): 4.5 * scale,
            }
        },
        "niah": {"metrics": {at(niah, "accuracy"): 0.5 * scale}},
        "latency": {
            "metrics": {
                at(latency, "ctx_32", "decode_ms"): 1.0,
                at(latency, "ctx_2048", "decode_ms"): 7.0 * scale,
                at(latency, "ctx_2048", "prefill_tokens_per_s"): 900.0 * scale,
            }
        },
    }


@pytest.fixture
def outputs() -> dict:
    model, base = eval_outputs("model", 1.0), eval_outputs("baseline", 2.0)
    evaluated = {k: {"metrics": {**model[k]["metrics"], **base[k]["metrics"]}} for k in model}
    speedup = metric_key(bench.EVAL, "forward", "speedup_dual_over_primal_anchored")
    return {
        "train": {
            "final_loss": 3.5,
            "val_loss": 4.5,
            "checkpoint": "/abs/ckpt",
            "tokens_per_s": 1234.0,
        },
        "bench": {"metrics": {speedup: 6.0}},
        "evaluate": evaluated,
    }


def test_headline_reads_each_stage_at_its_longest_context(outputs):
    assert headline(outputs) == {
        "val/loss": 3.4,  # the perplexity eval's, over the whole val split
        "val/loss_ci95_lo": 3.3,
        "val/loss_ci95_hi": 3.5,
        "val/perplexity": 30.0,
        "val/loss_last_bucket": 4.0,
        "val/loss_len_64": 5.0,  # the mean over sequences of each length
        "val/loss_len_128": 4.5,
        "niah/accuracy": 0.5,
        "latency/decode_ms_longest": 7.0,
        "latency/prefill_tokens_per_s_longest": 900.0,
        "train/loss": 3.5,
        "train/val_loss_estimate": 4.5,  # the trainer's few batches, named as such
        "train/tokens_per_s": 1234.0,
        "bench/dual_over_primal_speedup": 6.0,
    }
    both = comparison(outputs)
    assert both["baseline/val/perplexity"] == 60.0 and "baseline/train/loss" not in both
    assert headline({"train": {"final_loss": 2.0, "val_loss": None}}) == {"train/loss": 2.0}
    # the baseline's train numbers come from its own bring-up; its evals as measured here
    with_train = comparison(outputs, {"train/loss": 3.0, "niah/accuracy": 0.9})
    assert with_train["baseline/train/loss"] == 3.0 and with_train["baseline/niah/accuracy"] == 1.0
    assert comparison({"train": {"final_loss": 2.0}}, {"train/loss": 3.0}) == {"train/loss": 2.0}


def test_the_summary_puts_the_baseline_beside_the_model(outputs, tmp_path):
    request = BringupRequest(preset="debug_tiny", overrides={"baseline": "debug_tiny-attention"})
    cfg = resolve(request, tmp_path)
    lines = summary_lines(cfg, comparison(outputs))
    assert "debug_tiny-attention" in lines[1]
    row = next(line for line in lines if "val/perplexity" in line).split()
    assert row == ["val/perplexity", "30", "60"]
    # one val loss, with its interval; the trainer's estimate labelled as one
    val = [line for line in lines if "val/loss " in line or "val_loss" in line]
    assert [line.split()[0] for line in val] == ["val/loss", "train/val_loss_estimate"]
    assert "whole val split" in val[0] and "3.4000 [3.3000, 3.5000]" in val[0]
    assert "6.8000 [6.6000, 7.0000]" in val[0]  # the baseline's beside it
    assert "trainer's estimate" in val[1] and "4.5" in val[1]
    assert not [line for line in lines if "ci95" in line]  # the bounds print inside the cell
    assert len(lines) <= 24  # one screen
    # a perplexity eval limited to a few batches is labelled with the rows it read
    limited = resolve(
        BringupRequest(preset="debug_tiny", overrides={"perplexity.max_batches": 4}), tmp_path
    )
    val = next(line for line in summary_lines(limited, comparison(outputs)) if "val/loss " in line)
    assert "first 32 val rows" in val and "whole" not in val


def test_only_ttt_bring_ups_run_the_op_benchmark_and_controls_add_their_stages(tmp_path):
    ttt = PipelineConfig.from_preset("small_cpu", run_root=tmp_path)
    assert ttt.controls == ["none"]
    assert stages_for(ttt) == tuple(s for s in STAGES if s not in {"extend", "long_context"})
    attention = PipelineConfig.from_preset("small_cpu", run_root=tmp_path, mixer="attention")
    assert "bench" not in stages_for(attention) and "compare" in stages_for(attention)
    alone = PipelineConfig.from_preset("small_cpu", run_root=tmp_path, controls=[])
    assert stages_for(alone) == ("tokenizer", "shards", "train", "bench", "evaluate", "register")
    extended = PipelineConfig.from_preset("long_context_cpu", run_root=tmp_path)
    assert stages_for(extended) == (
        "tokenizer", "shards", "train", "evaluate", "extend", "controls", "compare", "long_context",
        "register",
    )  # fmt: skip


def test_parent_params_identify_the_bring_up_and_paths_are_tags(tmp_path):
    cfg = resolve(BringupRequest(preset="debug_tiny"), tmp_path)
    tracking = Tracking(cfg)
    parent = tracking.start_parent("flow-run-id", None)
    child = tracking.start_child(
        parent, "tokenizer", cfg.tokenizer_config().model_dump(mode="json")
    )
    tracking.log_metrics(parent, {"train/loss": 3.5})
    client = MlflowClient(str(cfg.mlflow_tracking_uri))
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    assert parent_run.data.params == {k: str(v) for k, v in identity(cfg).items()}
    assert parent_run.data.params["model_params"] == str(cfg.train_config().model.num_params())
    for run in (parent_run, child_run):
        assert not [v for v in run.data.params.values() if Path(v).is_absolute()]
    assert parent_run.data.tags["run_dir"] == str(cfg.run_dir)
    assert child_run.data.tags["path.out"] == str(cfg.stage_dir("tokenizer"))
    assert child_run.info.run_name == f"{cfg.run_name}/tokenizer"
    assert parent_run.data.metrics == {"train/loss": 3.5}
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert "pipeline_config.json" in artifacts


def test_the_experiment_opens_on_the_training_view_and_links_use_the_served_ui(
    tmp_path, monkeypatch
):
    cfg = resolve(BringupRequest(preset="debug_tiny"), tmp_path)
    monkeypatch.delenv(UI_ENV, raising=False)
    tracking = Tracking(cfg)
    experiment = tracking.client.get_experiment(tracking.experiment_id)
    assert experiment.tags[KIND_TAG] == "custom_model_development"
    assert tracking.run_url("abc") is None  # a local store and no UI served
    monkeypatch.setenv(UI_ENV, "http://127.0.0.1:5123")
    assert tracking.run_url("abc") == (
        f"http://127.0.0.1:5123/#/experiments/{tracking.experiment_id}/runs/abc"
        "?workflowType=machine_learning"
    )
    table = runs_table_url("http://127.0.0.1:5123/", "7")
    route, query = table.split("?")
    assert route == "http://127.0.0.1:5123/#/experiments/7/runs"
    assert parse_qs(query) == {
        "workflowType": ["machine_learning"], "orderByKey": ["metrics.`val/loss`"],
        "orderByAsc": ["true"],
    }  # fmt: skip


def test_the_markdown_summary_has_the_table_the_controls_and_the_links(outputs, tmp_path):
    request = BringupRequest(preset="debug_tiny", overrides={"baseline": "debug_tiny-attention"})
    cfg = resolve(request, tmp_path)
    (cfg.stage_dir("compare")).mkdir(parents=True)
    (cfg.stage_dir("compare") / "compare.md").write_text("| model | val loss |\n|---|---|\n")
    text = summary_markdown(cfg, comparison(outputs), status="completed", error=None,
                            flow_run_url="http://127.0.0.1:4200/runs/flow-run/x")  # fmt: skip
    assert text.startswith(f"### Bring-up `{cfg.run_name}`: completed")
    assert "| metric | ttt_linear | baseline debug_tiny-attention |" in text
    assert "| val/loss (whole val split, [95% CI]) | 3.4000 [3.3000, 3.5000] | 6.8000" in text
    # debug_tiny trains at 32: 64 tokens are 2x, 128 are 4x
    assert "val/loss_len_128 (sequences of 4x the training length) | 4.5 | 9 |" in text
    assert "#### Against the controls" in text and "| model | val loss |" in text
    assert "- Prefect flow run: http://127.0.0.1:4200/runs/flow-run/x" in text
    failed = summary_markdown(cfg, {}, status="failed", error="RuntimeError: x", flow_run_url=None)
    assert "**Error:** `RuntimeError: x`" in failed and "Prefect flow run" not in failed


def test_the_headline_table_artifact_has_the_markdown_tables_rows(outputs, tmp_path):
    request = BringupRequest(preset="debug_tiny", overrides={"baseline": "debug_tiny-attention"})
    cfg = resolve(request, tmp_path)
    rows = headline_rows(cfg, comparison(outputs))
    assert list(rows[0]) == ["metric", "ttt_linear", "baseline debug_tiny-attention"]
    loss = next(r for r in rows if r["metric"].startswith("val/loss ("))
    assert loss["ttt_linear"] == "3.4000 [3.3000, 3.5000]"
    text = summary_markdown(cfg, comparison(outputs), status="completed", error=None,
                            flow_run_url=None)  # fmt: skip
    assert all("| " + " | ".join(row.values()) + " |" in text for row in rows)
    assert not any("ci95" in r["metric"] for r in rows)  # the interval sits in the loss cell
    assert headline_rows(cfg, {}) == []
