"""plots: drawn from result tables alone; loss curves of any number of models with bands,
latency on log x with y from 0, the NIAH heatmap with its chance level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from eval_stage.plots import (
    draw_plots,
    latency_figure,
    loss_curves_figure,
    plot_loss_curves,
    position_loss_curves,
)
from eval_stage.position_loss import bucket_edges, bucket_rows
from eval_stage.results import DeviceInfo, EvalResult, ModelInfo
from ttt_core import ModelConfig

DEVICE = DeviceInfo(type="cpu", name="test cpu", threads=2, torch_version="x")


def _info(role: str, mixer: str) -> ModelInfo:
    config = ModelConfig.from_preset("debug_tiny", mixer=mixer)
    return ModelInfo(role=role, source="mem", mixer=mixer, num_params=config.num_params(),
                     config=config.model_dump(mode="json"))  # fmt: skip


def _position_result(level: float, seed: int) -> EvalResult:
    """A position-loss result of a model and a baseline at lengths 32 and 64 (train_len 32)."""
    rng = np.random.default_rng(seed)
    rows = []
    for role, offset in (("model", 0.0), ("baseline", 0.3)):
        for length in (32, 64):
            losses = (
                level
                + offset
                + 2 / np.sqrt(np.arange(1, length + 1))
                + rng.normal(0, 0.5, (12, length))
            )
            edges = bucket_edges(length, 6, "log")
            rows += [r.model_dump() for r in bucket_rows(losses, edges, role, 200, 0)]
    return EvalResult(
        eval="position-loss", device=DEVICE,
        models=[_info("model", "ttt_linear"), _info("baseline", "attention")],
        config={"buckets": "log", "train_len": 32}, metrics={}, tables={"buckets": rows},
    )  # fmt: skip


def test_curves_of_several_runs_share_axes_with_bands(tmp_path: Path) -> None:
    curves = position_loss_curves(_position_result(3.0, 0), name="run-a")
    curves += [c for c in position_loss_curves(_position_result(2.5, 1), name="run-b")]
    labels = list(dict.fromkeys(c.label for c in curves))
    assert labels == ["run-a (ttt_linear)", "run-a baseline (attention)",
                      "run-b (ttt_linear)", "run-b baseline (attention)"]  # fmt: skip
    fig = loss_curves_figure(curves, train_len=32)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert len(panels) == 2  # one per length
    for ax, length in zip(panels, (32, 64), strict=True):
        assert ax.get_xscale() == "log" and ax.get_xlim() == (1, length)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 4  # a 95% band per curve
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all(any(text.startswith(label) for text in legend) for label in labels)
        assert "training length" in legend
        assert "token index" in ax.get_xlabel()
    assert "nats" in panels[0].get_ylabel()
    path = plot_loss_curves(curves, tmp_path / "compare.png", train_len=32)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_curves_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no loss curves"):
        plot_loss_curves([], tmp_path / "x.png")


def test_latency_axes_start_at_zero_on_log_contexts() -> None:
    rows = [
        {"role": role, "mixer": mixer, "context": c, "prefill_s": 0.1, "cache_bytes": 1,
         "prefill_tokens_per_s": 1000.0 + c, "decode_ms": base + c / 1000}
        for role, mixer, base in (("model", "ttt_linear", 5.0), ("baseline", "attention", 6.0))
        for c in (128, 512, 2048)
    ]  # fmt: skip
    result = EvalResult(eval="latency", device=DEVICE, config={}, metrics={},
                        models=[_info("model", "ttt_linear"), _info("baseline", "attention")],
                        tables={"latency": rows})  # fmt: skip
    decode_ax, prefill_ax = latency_figure(result).axes
    for ax in (decode_ax, prefill_ax):
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > max(ax.get_lines()[0].get_ydata())
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "512", "2048"]
    assert "ms / token" in decode_ax.get_ylabel() and "tokens / s" in prefill_ax.get_ylabel()


def test_every_eval_with_a_plot_writes_it(tmp_path: Path) -> None:
    cells = [{"role": "model", "context": c, "depth": d, "trials": 2, "correct": 1.0,
              "accuracy": 0.5, "chance": 0.1} for c in (64, 128) for d in (0.0, 1.0)]  # fmt: skip
    niah = EvalResult(eval="niah", device=DEVICE, config={"scoring": "rank"}, metrics={},
                      models=[_info("model", "ttt_linear")], tables={"cells": cells})  # fmt: skip
    for result in (_position_result(3.0, 0), niah):
        (path,) = draw_plots(result, tmp_path)
        assert path.name == f"{result.stem}.png" and path.stat().st_size > 10_000
