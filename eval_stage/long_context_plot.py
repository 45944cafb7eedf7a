"""The long-context figure, drawn from a `LongContextResult` alone: four panels against length
(log x): the loss difference from the reference with its paired 95% band, passkey accuracy with
its Wilson band and the chance level, the decode state's size (log y), and decode ms/token."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .figures import save_figure
from .long_context import LongContextResult, LongContextRow


def _lengths_axis(ax: Axes, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("sequence length (tokens, log scale)")
    ax.grid(alpha=0.3)


def long_context_figure(result: LongContextResult) -> Figure:
    """The four panels (module docstring), one colour per model, the reference dashed at 0."""
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (diff_ax, niah_ax), (state_ax, decode_ax) = fig.subplots(2, 2)
    by_model: dict[str, list[LongContextRow]] = {}
    for row in result.rows:
        by_model.setdefault(row.model, []).append(row)
    for i, (name, rows) in enumerate(by_model.items()):
        colour, x = f"C{i}", [r.length for r in rows]
        style = {"color": colour, "marker": "o", "label": name}
        if name == result.reference:
            diff_ax.axhline(0.0, color=colour, linestyle="--", label=f"{name} (reference)")
        else:
            diff_ax.fill_between(x, [r.diff_ci95[0] for r in rows], [r.diff_ci95[1] for r in rows],
                                 color=colour, alpha=0.2, linewidth=0)  # fmt: skip
            diff_ax.plot(x, [r.loss_diff_vs_reference for r in rows], **style)
        niah = [r for r in rows if r.niah_accuracy is not None]
        if niah:
            nx = [r.length for r in niah]
            niah_ax.fill_between(nx, [r.niah_ci95[0] for r in niah], [r.niah_ci95[1] for r in niah],
                                 color=colour, alpha=0.15, linewidth=0)  # fmt: skip
            niah_ax.plot(nx, [r.niah_accuracy for r in niah], **style)
        state_ax.plot(x, [r.state_bytes / 2**20 for r in rows], **style)
        decode_ax.plot(x, [r.decode_ms_per_token for r in rows], **style)
    diff_ax.set_ylabel(f"second-half loss minus {result.reference}'s (nats / token)")
    diff_ax.set_title("loss vs the reference (bands: paired 95% bootstrap)", fontsize="medium")
    if result.niah_chance is not None:
        niah_ax.axhline(result.niah_chance, color="gray", linestyle=":", label="chance")
    else:
        niah_ax.text(0.5, 0.5, "passkey eval not run (niah_trials 0)", ha="center",
                     transform=niah_ax.transAxes)  # fmt: skip
    niah_ax.set_ylim(0, 1)
    niah_ax.set_ylabel("passkey accuracy")
    niah_ax.set_title("passkey retrieval (bands: Wilson 95%)", fontsize="medium")
    state_ax.set_yscale("log")
    state_ax.set_ylabel("decode state after the prompt (MiB, log scale)")
    state_ax.set_title("state size", fontsize="medium")
    decode_ax.set_ylim(bottom=0)
    decode_ax.set_ylabel("decode ms / token (mean, batch 1)")
    decode_ax.set_title("decode latency", fontsize="medium")
    for ax in (diff_ax, niah_ax, state_ax, decode_ax):
        _lengths_axis(ax, result.lengths)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    device = result.device
    fig.suptitle(
        f"Long context against {result.reference}: the same val sequences at every length "
        f"({device.type}, {device.threads} threads)"
    )
    return fig


def plot_long_context(result: LongContextResult, path: Path) -> Path:
    return save_figure(long_context_figure(result), path)
