"""PNG plots drawn from a result's tables alone (so they can be redrawn from the JSON).

Uses matplotlib's object API on the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .compare_plot import plot_compare
from .latency import LatencyRow
from .niah import NiahCell
from .position_loss import BucketRow
from .results import EvalResult

LINESTYLES = {"model": "-", "baseline": "--"}


def _label(result: EvalResult, role: str) -> str:
    info = result.role_info(role)
    return f"{role} ({info.mixer})" if info else role


def save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_position_loss(result: EvalResult, path: Path) -> Path:
    """Mean loss per token-index bucket, one line per (model, length); log x for log buckets."""
    rows = [BucketRow.model_validate(r) for r in result.tables["buckets"]]
    log = result.config["buckets"] == "log"
    lengths = sorted({r.length for r in rows})
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for role in dict.fromkeys(r.role for r in rows):
        for i, length in enumerate(lengths):
            line = [r for r in rows if r.role == role and r.length == length]
            x = [np.sqrt(r.start * r.end) if log else (r.start + r.end) / 2 for r in line]
            ax.plot(
                x,
                [r.mean_loss for r in line],
                LINESTYLES[role],
                marker=".",
                color=f"C{i}",
                label=f"{_label(result, role)}, length {length}",
            )
    ax.axvline(result.config["train_len"], color="gray", linestyle=":", label="training length")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("token index")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title("Loss vs token index")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_niah(result: EvalResult, path: Path) -> Path:
    """Accuracy heatmap (depth x context length), one panel per model."""
    cells = [NiahCell.model_validate(c) for c in result.tables["cells"]]
    contexts = sorted({c.context for c in cells})
    depths = sorted({c.depth for c in cells})
    panel_roles = list(dict.fromkeys(c.role for c in cells))
    size = (1.2 * len(contexts) * len(panel_roles) + 2.5, 0.6 * len(depths) + 2)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, len(panel_roles), squeeze=False)[0]
    for ax, role in zip(axes, panel_roles, strict=True):
        grid = np.full((len(depths), len(contexts)), np.nan)
        for c in cells:
            if c.role == role:
                grid[depths.index(c.depth), contexts.index(c.context)] = c.accuracy
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            color = "k" if value > 0.6 else "w"  # readable on viridis' light and dark ends
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize="small")
        ax.set_xticks(range(len(contexts)), [str(c) for c in contexts])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(f"passkey accuracy: {_label(result, role)}")
    axes[0].set_ylabel("needle depth")
    fig.colorbar(image, ax=list(axes), label="exact-match accuracy")
    return save_figure(fig, path)


def plot_latency(result: EvalResult, path: Path) -> Path:
    """Decode ms/token and prefill tokens/s against context length, one line per model."""
    rows = [LatencyRow.model_validate(r) for r in result.tables["latency"]]
    fig = Figure(figsize=(11, 4.5))
    decode_ax, prefill_ax = fig.subplots(1, 2)
    for role in dict.fromkeys(r.role for r in rows):
        mine = [r for r in rows if r.role == role]
        contexts = [r.context for r in mine]
        style = dict(linestyle=LINESTYLES[role], marker="o", label=_label(result, role))
        decode_ax.plot(contexts, [r.decode_ms for r in mine], **style)
        prefill_ax.plot(contexts, [r.prefill_tokens_per_s for r in mine], **style)
    for ax, ylabel in (
        (decode_ax, "decode latency (ms / token)"),
        (prefill_ax, "prefill tokens/s"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    device = result.device
    fig.suptitle(f"Latency, batch 1, {device.type}: {device.name}, {device.threads} threads")
    return save_figure(fig, path)


PLOTTERS: dict[str, Callable[[EvalResult, Path], Path]] = {
    "position-loss": plot_position_loss,
    "niah": plot_niah,
    "latency": plot_latency,
    "compare": plot_compare,
}


def draw_plots(result: EvalResult, out_dir: Path) -> list[Path]:
    """The eval's PNG (`<out_dir>/<stem>.png`), or nothing for evals without a plot."""
    plotter = PLOTTERS.get(result.eval)
    return [plotter(result, out_dir / f"{result.stem}.png")] if plotter else []
