"""flows: Prefect 3 flows that chain the stages into one bring-up, and the MLflow layout.

`python -m flows run|serve|up` (see docs/flows.md). This package imports Prefect lazily: the CLI
points `PREFECT_HOME` at the run root's state dir and turns telemetry off before Prefect loads.
"""

from typing import Any

__all__ = ["PIPELINE_PRESETS", "PipelineConfig"]


def __getattr__(name: str) -> Any:
    """`flows.PipelineConfig` and `flows.PIPELINE_PRESETS`, loaded on first use: importing a
    light module of this package (`flows.up`, the supervisor) must not load the stages."""
    if name in __all__:
        from flows import config

        return getattr(config, name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
