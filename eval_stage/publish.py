"""Write a result (JSON + its plot) to a folder and copy it to MLflow when a run is given; the same
for a comparison of runs and for a long-context comparison, which add a Markdown table."""

from __future__ import annotations

from pathlib import Path

from stage_common.faults import output_dir_problem
from ttt_core.files import atomic_write_text

from . import long_context
from .compare import compare_runs, markdown
from .errors import EvalInputError
from .long_context_plot import plot_long_context
from .plots import draw_plots
from .results import EvalResult, result_file, write_json
from .tracking import TrackingConfig, log_metrics_and_files, log_result


def publish(
    result: EvalResult, out_dir: Path | str, tracking: TrackingConfig | None = None
) -> list[Path]:
    """Write `<out_dir>/<stem>.png` (evals with a plot) and `<out_dir>/<stem>.json` (listing the
    plot), then log both to MLflow when `tracking.run_id` is set. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(result, out_dir)
    result = result.model_copy(update={"plots": [p.name for p in plots]})
    json_path = result_file(out_dir, result.eval)
    write_json(result, json_path)
    files = [json_path, *plots]
    if tracking is not None and tracking.run_id is not None:
        log_result(result, files, tracking)
    return files


def write_comparison(
    runs: list[Path], out: Path, tracking: TrackingConfig | None = None
) -> tuple[EvalResult, list[Path]]:
    """Compare `runs` and write `<out>/compare.json`, `.png` and `.md` (the out dir checked before
    any work); logged to MLflow when `tracking.run_id` is set. Returns the result and files."""
    if problem := output_dir_problem(out):
        raise EvalInputError(f"--out {problem}")
    result = compare_runs(runs)
    table = Path(out) / "compare.md"
    files = [*publish(result, out), table]
    atomic_write_text(table, markdown(result))
    if tracking is not None and tracking.run_id is not None:
        log_result(result, files, tracking)
    return result, files


def write_long_context(
    result: long_context.LongContextResult, out: Path, tracking: TrackingConfig | None = None
) -> list[Path]:
    """`<out>/long_context.png`, `.md` and `.json` (last, listing the figure), then the metrics
    and files to MLflow when `tracking.run_id` is set. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_long_context(result, out / f"{long_context.STEM}.png")
    table = out / f"{long_context.STEM}.md"
    atomic_write_text(table, long_context.markdown(result))
    json_path = out / f"{long_context.STEM}.json"
    final = result.model_copy(update={"plots": [figure.name]})
    atomic_write_text(json_path, final.model_dump_json(indent=2) + "\n")
    files = [json_path, figure, table]
    if tracking is not None and tracking.run_id is not None:
        step = next((m.step for m in result.models if m.step is not None), 0)
        log_metrics_and_files(
            long_context.metrics(result),
            files,
            tracking,
            step=step,
            artifact_path=f"eval/{long_context.STEM}",
        )
    return files
