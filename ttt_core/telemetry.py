"""Nothing leaves the machine: MLflow's and Prefect's usage telemetry off, in one place.

Both libraries read these variables when they are first imported, so `telemetry_off()` is called
before that: by each entry point (`flows.env.prepare_env`) and by the code that imports MLflow
lazily (train_stage's tracker, eval_stage's `log_result`). Nothing here runs at import time.
Imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
}


def telemetry_off(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set the telemetry switches off in `env` (default `os.environ`, e.g. a subprocess's env)
    unless the user already set them. Returns `env`."""
    target = os.environ if env is None else env
    for key, value in TELEMETRY_OFF.items():
        target.setdefault(key, value)
    return target
