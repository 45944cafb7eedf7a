"""Process environment for Prefect and MLflow: telemetry off, state under the run root.

Call `prepare_env` before the first `import prefect`: Prefect reads its settings when it loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ttt_core import telemetry_off

# Where a flow run works and logs, set by the process that runs it (`flows up/deploy/run`)
RUN_ROOT_ENV, MLFLOW_URI_ENV = "FLOWS_RUN_ROOT", "FLOWS_MLFLOW_TRACKING_URI"
UI_ENV = "FLOWS_MLFLOW_UI"  # the MLflow UI `flows up` serves, for links to runs


def state_dir(run_root: Path) -> Path:
    """Where Prefect keeps its home (database, results, logs) for this run root."""
    return Path(run_root).expanduser().resolve() / ".prefect"


def prepare_env(run_root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Set (in `env`, default `os.environ`) telemetry off (`ttt_core.telemetry_off`) and
    `PREFECT_HOME` under `run_root`, each unless the caller already chose it. Returns the
    mapping it changed."""
    target = telemetry_off(os.environ if env is None else env)
    # A first start migrates a new database: 20 s (Prefect's default) is too short on 2 cores.
    target.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    home = target.setdefault("PREFECT_HOME", str(state_dir(run_root)))
    Path(home).mkdir(parents=True, exist_ok=True)
    return target
