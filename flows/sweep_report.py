"""A sweep's outputs: `sweep.json` (every point), `sweep.md` (the ranking, with the command that
made it), `sweep.png` (val loss against lr, else the first axis), and the ranking's rows for the
Prefect table artifact. Every function takes the latest record of each point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ttt_core import atomic_write_text

KEPT = ("name", "params", "status", "val_loss", "train_loss", "tokens_per_s", "wall_s", "steps",
        "resumed_from_step", "trial", "note")  # fmt: skip


def ranked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points with a val loss first, lowest first; the others (diverged, failed) after."""
    return sorted(records, key=lambda r: (r.get("val_loss") is None, r.get("val_loss") or 0.0))


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _value(value: Any) -> str:
    """An axis value as a cell: floats to 4 significant digits (TPE samples 1.5119e-02, not
    0.01511933646764101), others as given."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ranking_rows(sweep: Any, records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per point, best first: its axis values, the trainer's val loss (on its
    `eval_batches` val batches, the same rows for every point), last train loss, tokens/s, wall
    seconds, status (with why, for a pruned or failed one) and its Optuna trial number."""
    batches = sweep.first.train.eval_batches
    rows = []
    for r in ranked(records):
        row = {axis: _value(r["params"][axis]) for axis in sweep.axes}
        row.update({
            f"val loss (trainer, {batches} val batches)": _fmt(r["val_loss"], ".4f"),
            "train loss (last step)": _fmt(r.get("train_loss"), ".4f"),
            "tokens/s": _fmt(r.get("tokens_per_s"), ",.0f"),
            "wall s": _fmt(r.get("wall_s"), ".0f"),
            "status": r["status"] + (f": {r['note']}" if r.get("note") else ""),
            "trial": _fmt(r.get("trial"), "d"),
        })  # fmt: skip
        rows.append(row)
    return rows


def markdown_table(sweep: Any, records: list[dict[str, Any]]) -> str:
    """`ranking_rows` as Markdown, under the sweep's title and the command that made it."""
    rows = ranking_rows(sweep, records)
    head = list(rows[0]) if rows else list(sweep.axes)
    lines = [
        f"# Sweep: {sweep.base.preset} / {sweep.base.mixer} ({sweep.spec.sampler} sampler, "
        f"{sweep.spec.pruner} pruner)",
        "",
        f"`{sweep.command}`" if sweep.command else "",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(row.values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(sweep: Any, records: list[dict[str, Any]], path: Path) -> Path:
    """Val loss against the lr axis (else the first axis with more than one value), one line
    per value of the other axes; log x when the values are positive and span 2x or more (lr
    grids are geometric). The y axis spans at least 0.2 nats, so noise between close points is
    not drawn as a cliff."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes = sweep.axes
    varied = [a for a in ("train.lr", *axes) if len(axes.get(a, [])) > 1]
    x_axis = varied[0] if varied else next(iter(axes))
    # a grid draws one line per value of the other axes; sampled ranges are points, one group
    others = [a for a in axes if a != x_axis] if not sweep.spec.ranges else []
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r["params"][a] for a in others), []).append(r)
    losses = []
    for values, group in groups.items():
        done = sorted(
            (r for r in group if r["val_loss"] is not None), key=lambda r: r["params"][x_axis]
        )
        xs = [r["params"][x_axis] for r in done]
        ys = [r["val_loss"] for r in done]
        losses += ys
        label = ", ".join(
            f"{a.removeprefix('train.')}={v}" for a, v in zip(others, values, strict=True)
        )
        ax.plot(xs, ys, marker="o", linestyle="none" if sweep.spec.ranges else "-",
                label=label or None)  # fmt: skip
    x_values = [v for v in axes[x_axis] if isinstance(v, int | float)]
    if x_values and min(x_values) > 0 and max(x_values) / min(x_values) >= 2:
        ax.set_xscale("log")
    if losses:
        low, high = min(losses), max(losses)
        pad = max(0.0, 0.2 - (high - low)) / 2 + 0.02
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel(x_axis)
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title(f"{sweep.base.preset} / {sweep.base.mixer}: val loss per point")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_outputs(sweep: Any, records: list[dict[str, Any]]) -> list[Path]:
    """`sweep.json` (every point), `sweep.md` (sorted table) and `sweep.png`, each atomically."""
    out = sweep.out
    data = {
        "preset": sweep.base.preset,
        "mixer": sweep.base.mixer,
        "sampler": sweep.spec.sampler,
        "pruner": sweep.spec.pruner,
        "axes": sweep.axes,
        "study": sweep.spec.study_name(),
        "command": sweep.command,
        "points": [{k: r.get(k) for k in KEPT} for r in ranked(records)],
    }
    atomic_write_text(out / "sweep.json", json.dumps(data, indent=2))
    atomic_write_text(out / "sweep.md", markdown_table(sweep, records))
    tmp = out / ".sweep.png.tmp.png"
    plot(sweep, records, tmp)
    os.replace(tmp, out / "sweep.png")
    return [out / "sweep.json", out / "sweep.md", out / "sweep.png"]
