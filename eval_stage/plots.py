"""PNG plots drawn from a result's tables alone (so they can be redrawn from the JSON).

Uses matplotlib's object API on the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .compare_plot import plot_compare
from .figures import LossCurve, draw_loss_panel, save_figure
from .latency import LatencyRow
from .niah import NiahCell
from .position_loss import BucketRow
from .results import EvalResult

LINESTYLES = {"model": "-", "baseline": "--"}
LOSS_TITLE = "Next-token loss by token index (bands: 95% bootstrap intervals over sequences)"


def _label(result: EvalResult, role: str, who: str | None = None) -> str:
    """`<who> (<mixer>)`; `who` defaults to the role."""
    who = who or role
    info = result.role_info(role)
    return f"{who} ({info.mixer})" if info else who


def position_loss_curves(result: EvalResult, name: str | None = None) -> list[LossCurve]:
    """Every (role, length) curve of a position-loss result. Labelled `<role> (<mixer>)`, or with
    `name` (e.g. a run's name) `<name> (<mixer>)` for the model, `<name> baseline (<mixer>)`."""
    rows = [BucketRow.model_validate(r) for r in result.tables["buckets"]]
    curves = []
    for role, length in dict.fromkeys((r.role, r.length) for r in rows):
        who = role if name is None else (name if role == "model" else f"{name} {role}")
        mine = [r for r in rows if r.role == role and r.length == length]
        curves.append(LossCurve(label=_label(result, role, who), length=length, buckets=mine))
    return curves


def plot_loss_curves(
    curves: Sequence[LossCurve],
    path: Path,
    *,
    train_len: int | None = None,
    log_x: bool = True,
    title: str = LOSS_TITLE,
) -> Path:
    """`loss_curves_figure` written to `path` (PNG); returns `path`."""
    return save_figure(
        loss_curves_figure(curves, train_len=train_len, log_x=log_x, title=title), path
    )


def loss_curves_figure(
    curves: Sequence[LossCurve],
    *,
    train_len: int | None = None,
    log_x: bool = True,
    title: str = LOSS_TITLE,
) -> Figure:
    """Any number of labelled curves on shared axes: one panel per sequence length (shared y),
    one colour per label, the 95% interval as a band, `train_len` as a dotted vertical line.
    Token index t on x (log scale when `log_x`), from 1 to the length."""
    if not curves:
        raise ValueError("no loss curves to plot")
    lengths = sorted({c.length for c in curves})
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(c.label for c in curves))}
    fig = Figure(figsize=(4.5 * len(lengths) + 1, 4.8), layout="constrained")
    axes = fig.subplots(1, len(lengths), sharey=True, squeeze=False)[0]
    for ax, length in zip(axes, lengths, strict=True):
        mine = [c for c in curves if c.length == length]
        draw_loss_panel(ax, mine, colours, train_len=train_len, log_x=log_x)
    axes[0].set_ylabel("next-token loss (nats / token)")
    fig.suptitle(title)
    return fig


def plot_position_loss(result: EvalResult, path: Path) -> Path:
    """The result's curves (model and baseline at each length) through `plot_loss_curves`."""
    return plot_loss_curves(
        position_loss_curves(result),
        path,
        train_len=result.config["train_len"],
        log_x=result.config["buckets"] == "log",
    )


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
    axes[0].set_ylabel("needle depth (fraction of the haystack)")
    chance = cells[0].chance
    how = "top-1 of candidate keys" if result.config["scoring"] == "rank" else "exact match"
    bar = fig.colorbar(image, ax=list(axes), label=f"accuracy, {how} (chance {chance:.3g})")
    bar.ax.axhline(chance, color="red", linewidth=2)  # the chance level on the scale
    return save_figure(fig, path)


def plot_latency(result: EvalResult, path: Path) -> Path:
    """`latency_figure` written to `path` (PNG); returns `path`."""
    return save_figure(latency_figure(result), path)


def latency_figure(result: EvalResult) -> Figure:
    """Decode ms/token and prefill tokens/s against context length (log x, y from 0), one line
    per model."""
    rows = [LatencyRow.model_validate(r) for r in result.tables["latency"]]
    fig = Figure(figsize=(11, 4.5))
    decode_ax, prefill_ax = fig.subplots(1, 2)
    for role in dict.fromkeys(r.role for r in rows):
        mine = [r for r in rows if r.role == role]
        contexts = [r.context for r in mine]
        style = dict(linestyle=LINESTYLES[role], marker="o", label=_label(result, role))
        decode_ax.plot(contexts, [r.decode_ms for r in mine], **style)
        prefill_ax.plot(contexts, [r.prefill_tokens_per_s for r in mine], **style)
    contexts = sorted({r.context for r in rows})
    for ax, ylabel in (
        (decode_ax, "decode latency (ms / token)"),
        (prefill_ax, "prefill throughput (tokens / s)"),
    ):
        # log x: contexts grow geometrically; y from 0, so a small difference looks small
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(bottom=0)
        ax.set_xlabel("context length (tokens, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    device = result.device
    fig.suptitle(f"Latency, batch 1, {device.type}: {device.name}, {device.threads} threads")
    return fig


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
