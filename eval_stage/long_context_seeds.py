"""Long-context results of several seeds side by side: how far the seed-to-seed spread of a
difference goes beside each seed's paired bootstrap interval.

Each input is one seed's `long_context.json` (its own trained models, its own reference). Per
model and length: every seed's difference from its reference and that seed's 95% interval, the
mean over seeds and the seeds' range (min..max). A difference is `supported` when every seed's
interval excludes 0 on the same side.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from ttt_core.files import atomic_write_text

from .errors import EvalInputError
from .long_context import Interval, LongContextResult
from .results import created_by, text_table, utc_now

STEM = "long_context_seeds"


class SeedDiff(BaseModel):
    seed: int
    diff: float
    diff_ci95: Interval
    loss: float
    niah_accuracy: float | None


class SeedRow(BaseModel):
    """One model at one length over seeds; `supported`: -1 (lower than the reference in every
    seed's interval), +1 (higher in every one), 0 (otherwise)."""

    model: str
    length: int
    seeds: list[SeedDiff]
    diff_mean: float
    diff_min: float
    diff_max: float
    supported: int
    niah_mean: float | None


class SeedSummary(BaseModel):
    created_by: str = Field(default_factory=created_by)
    created_at: str = Field(default_factory=utc_now)
    reference: str
    lengths: list[int]
    sources: list[str]
    rows: list[SeedRow]


def _supported(intervals: list[Interval]) -> int:
    if all(hi < 0 for _, hi in intervals):
        return -1
    if all(lo > 0 for lo, _ in intervals):
        return 1
    return 0


def combine_seeds(results: dict[int, LongContextResult], sources: list[str]) -> SeedSummary:
    """The per-seed results (seed -> result, each with the same reference, models and lengths)
    as one row per model x length; refused when they do not describe the same comparison."""
    if not results:
        raise EvalInputError("no long-context results to combine")
    first = next(iter(results.values()))
    shape = (first.reference, first.lengths, [m.name for m in first.models])
    for seed, result in results.items():
        if (result.reference, result.lengths, [m.name for m in result.models]) != shape:
            raise EvalInputError(
                f"seed {seed}'s long-context result compares other models or lengths than "
                f"seed {next(iter(results))}'s: {shape} expected"
            )
    rows = []
    for length in first.lengths:
        for model in shape[2]:
            seeds = [
                SeedDiff(
                    seed=seed,
                    diff=(row := result.row(model, length)).loss_diff_vs_reference,
                    diff_ci95=row.diff_ci95,
                    loss=row.loss,
                    niah_accuracy=row.niah_accuracy,
                )
                for seed, result in results.items()
            ]
            diffs = [s.diff for s in seeds]
            niah = [s.niah_accuracy for s in seeds if s.niah_accuracy is not None]
            rows.append(
                SeedRow(
                    model=model,
                    length=length,
                    seeds=seeds,
                    diff_mean=statistics.fmean(diffs),
                    diff_min=min(diffs),
                    diff_max=max(diffs),
                    supported=0 if model == first.reference else _supported(
                        [s.diff_ci95 for s in seeds]
                    ),
                    niah_mean=statistics.fmean(niah) if niah else None,
                )
            )  # fmt: skip
    return SeedSummary(reference=first.reference, lengths=first.lengths, sources=sources, rows=rows)


_VERDICT = {-1: "lower in every seed", 1: "higher in every seed", 0: "not supported"}


def _table(summary: SeedSummary) -> list[dict]:
    out = []
    for r in summary.rows:
        if r.model == summary.reference:
            continue
        per_seed = "; ".join(
            f"{s.diff:+.3f} [{s.diff_ci95[0]:+.3f}, {s.diff_ci95[1]:+.3f}]" for s in r.seeds
        )
        out.append({
            "model": r.model,
            "length": r.length,
            "mean diff": f"{r.diff_mean:+.4f}",
            "seed range": f"[{r.diff_min:+.3f}, {r.diff_max:+.3f}]",
            "each seed [paired 95% CI]": per_seed,
            "verdict": _VERDICT[r.supported],
            "passkey (mean)": "" if r.niah_mean is None else f"{r.niah_mean:.2f}",
        })  # fmt: skip
    return out


COLUMNS = ["model", "length", "mean diff", "seed range", "each seed [paired 95% CI]",
           "verdict", "passkey (mean)"]  # fmt: skip


def summarize(summary: SeedSummary) -> str:
    return text_table(_table(summary), COLUMNS)


def markdown(summary: SeedSummary) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in _table(summary)]
    lines += [
        "",
        f"- diff: second-half loss minus {summary.reference}'s (trained with the same seed), "
        "nats/token; negative is better than the reference.",
        "- seed range: the smallest and largest of the seeds' differences; each seed's interval "
        "is a paired bootstrap over its val sequences.",
        "- verdict: `lower/higher in every seed` when every seed's interval excludes 0 on that "
        "side; anything else is not a supported difference.",
    ]
    return "\n".join(lines) + "\n"


def write_seed_summary(summary: SeedSummary, out: Path) -> list[Path]:
    """`<out>/long_context_seeds.json` and `.md`; returns both."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, table = out / f"{STEM}.json", out / f"{STEM}.md"
    atomic_write_text(table, markdown(summary))
    atomic_write_text(json_path, summary.model_dump_json(indent=2) + "\n")
    return [json_path, table]
