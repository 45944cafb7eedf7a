"""flows: Prefect 3 flows that chain the stages into one bring-up, and the MLflow layout.

`python -m flows run|serve|up` (see docs/flows.md). This package imports Prefect lazily: the CLI
points `PREFECT_HOME` at the run root's state dir and turns telemetry off before Prefect loads.
"""

from flows.config import PIPELINE_PRESETS, PipelineConfig

__all__ = ["PIPELINE_PRESETS", "PipelineConfig"]
