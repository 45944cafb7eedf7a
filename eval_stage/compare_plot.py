"""The `compare` figure, drawn from a compare result's tables alone: loss by token index at the
longest evaluated length (95% bands when the runs' results have them), val loss with its
interval, decode latency against context, and training throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .compare import rows_of
from .figures import LossCurve, draw_loss_panel, save_figure
from .position_loss import BucketRow
from .results import EvalResult


def _position_panel(ax: Axes, buckets: list[dict[str, Any]], train_len: int | None) -> None:
    """Every run's curve at the longest length the runs were evaluated at, with its band."""
    if not buckets:
        ax.set_title("loss by position: no position-loss results")
        ax.axis("off")
        return
    longest = max(b["length"] for b in buckets)
    names = list(dict.fromkeys(b["name"] for b in buckets))
    curves = [
        LossCurve(
            label=name,
            length=longest,
            buckets=[
                BucketRow.model_validate({k: v for k, v in b.items() if k != "name"})
                for b in buckets
                if b["name"] == name and b["length"] == longest
            ],
        )
        for name in names
    ]
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    draw_loss_panel(ax, curves, colours, train_len=train_len, log_x=True)
    ax.set_ylabel("next-token loss (nats / token)")


def _val_loss_panel(ax: Axes, result: EvalResult) -> None:
    rows = [r for r in rows_of(result) if r.val_loss is not None]
    for i, row in enumerate(rows):
        lo = row.val_loss - row.val_loss_lo if row.val_loss_lo is not None else 0.0
        hi = row.val_loss_hi - row.val_loss if row.val_loss_hi is not None else 0.0
        ax.errorbar([i], [row.val_loss], yerr=[[lo], [hi]], fmt="o", color=f"C{i}", capsize=6)
        ax.annotate(
            f"{row.val_loss:.3f}",
            (i, row.val_loss),
            textcoords="offset points",
            xytext=(10, 0),
            va="center",
            fontsize="small",
        )
    ax.set_xticks(range(len(rows)), [r.name for r in rows])
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("val loss (nats)")
    ax.set_title("Val loss at the training length (95% CI; axis not from 0)")


def _latency_panel(ax: Axes, latency: list[dict[str, Any]]) -> None:
    contexts = sorted({r["context"] for r in latency})
    for i, name in enumerate(dict.fromkeys(r["name"] for r in latency)):
        mine = sorted((r for r in latency if r["name"] == name), key=lambda r: r["context"])
        ax.plot(
            [r["context"] for r in mine],
            [r["decode_ms"] for r in mine],
            marker="o",
            color=f"C{i}",
            label=name,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context length (tokens, log scale)")
    ax.set_ylabel("decode latency (ms / token)")
    ax.set_title("Decode latency, batch 1")
    if latency:
        ax.legend(fontsize="small")


def _throughput_panel(ax: Axes, result: EvalResult) -> None:
    rows = [r for r in rows_of(result) if r.train_tokens_per_s is not None]
    if not rows:
        ax.set_title("Training throughput: not recorded by these runs' exports")
        ax.axis("off")
        return
    ax.bar(
        range(len(rows)),
        [r.train_tokens_per_s for r in rows],
        color=[f"C{i}" for i in range(len(rows))],
    )
    ax.set_xticks(range(len(rows)), [r.name for r in rows])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("training tokens / s")
    ax.set_title("Training throughput")


def plot_compare(result: EvalResult, path: Path) -> Path:
    """The four panels of a compare result as one PNG at `path`."""
    fig = Figure(figsize=(13, 9), layout="constrained")
    (position, val), (latency, throughput) = fig.subplots(2, 2)
    train_lens = {r.train_len for r in rows_of(result) if r.train_len}
    _position_panel(position, result.tables["position_loss"], min(train_lens, default=None))
    _val_loss_panel(val, result)
    _latency_panel(latency, result.tables["latency"])
    _throughput_panel(throughput, result)
    device = result.device
    fig.suptitle(
        f"Comparison (reference: {result.config['reference']}); measured on "
        f"{device.type}: {device.name}, {device.threads} threads"
    )
    return save_figure(fig, path)
