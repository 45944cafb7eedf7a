"""Matplotlib pieces shared by the eval plots and the comparison figure: saving a figure on the
Agg canvas (no pyplot, no global backend switch) and the loss-by-position panel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .position_loss import BucketRow


def save_figure(fig: Figure, path: Path) -> Path:
    """`fig` as a PNG at `path`; returns `path`."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


@dataclass(frozen=True)
class LossCurve:
    """One model's loss-by-position curve at one sequence length: its buckets in token order,
    each with a mean and a 95% interval (`BucketRow`)."""

    label: str
    length: int
    buckets: list[BucketRow]


def draw_loss_panel(
    ax: Axes,
    curves: Sequence[LossCurve],
    colours: dict[str, str],
    *,
    train_len: int | None,
    log_x: bool,
) -> None:
    """`curves` (all of one length) on `ax`: mean loss per bucket against token index, the 95%
    interval as a band, `train_len` as a dotted line, x from 1 to the length (log when `log_x`)."""
    length = curves[0].length
    for curve in curves:
        rows = curve.buckets
        x = [np.sqrt(r.start * r.end) if log_x else (r.start + r.end) / 2 for r in rows]
        colour = colours[curve.label]
        ax.fill_between(x, [r.loss_lo for r in rows], [r.loss_hi for r in rows],
                        color=colour, alpha=0.2, linewidth=0)  # fmt: skip
        ax.plot(x, [r.mean_loss for r in rows], marker=".", color=colour,
                label=f"{curve.label}, n={rows[0].sequences}")  # fmt: skip
    if train_len is not None and train_len <= length:
        ax.axvline(train_len, color="gray", linestyle=":", label="training length")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlim(1, length)
    times = f", {length / train_len:g}x training length" if train_len else ""
    ax.set_title(f"sequences of {length} tokens{times}", fontsize="medium")
    ax.set_xlabel("token index t (tokens read before predicting)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
