"""What a person picks on the command line and in the deployment forms (the pipeline presets and
the defaults), importing nothing heavy: `python -m flows` builds its parser from these, so
`flows up`, which only starts and stops other processes, never loads torch, MLflow or Prefect."""

from __future__ import annotations

from typing import Literal

PresetName = Literal["debug_tiny", "small_cpu", "long_context_cpu"]
DEFAULT_PRESET: PresetName = "small_cpu"
# the long-context flow's defaults
LONG_CONTEXT_PRESET: PresetName = "long_context_cpu"
LONG_CONTEXT_SEEDS = (0, 1)
# the process work pool `flows deploy` creates and `flows up` starts a worker for
POOL_NAME = "ttt-local"
