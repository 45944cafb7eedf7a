"""Write a result (JSON + its plot) to a folder and copy it to MLflow when a run is given."""

from __future__ import annotations

from pathlib import Path

from .plots import draw_plots
from .results import EvalResult, result_file, write_json
from .tracking import TrackingConfig, log_result


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
