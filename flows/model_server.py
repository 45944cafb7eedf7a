"""The `serve` flow: start `python -m serve_stage` on a bring-up's export and hand back its URL.

`prefect deployment run serve/serve` with no parameters serves the newest export under the run
root (`<run_root>/<run>/export`) on 127.0.0.1:8000, its sessions under
`<run_root>/serve/port-8000/` (kept across restarts: a server started again on that port
continues every session). The server is a process of its own: the flow run completes once it
answers, with a markdown artifact `serve` giving the base URL, the pid and how to stop it.
`model` may also be another export directory or an MLflow URI (`runs:/<id>/model`,
`models:/<name>@<alias>`), read from the stack's MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.config import default_mlflow_uri
from flows.request import InvalidRequest, served_location
from serve_stage import ServeConfig, launch
from ttt_core import PretrainedOutputs


def latest_export(run_root: Path) -> Path:
    """The most recently written export under `run_root` (a bring-up's or a control's)."""
    exports = [p for p in Path(run_root).glob("**/export") if PretrainedOutputs(p).complete()]
    if not exports:
        raise InvalidRequest(
            f"no export under {run_root} yet: run a bring-up first "
            "(`prefect deployment run bringup/bringup`) or pass model=PATH_OR_MLFLOW_URI"
        )
    return max(exports, key=lambda p: (p / "model.safetensors").stat().st_mtime)


def summary_markdown(model: str, base_url: str, pid: int, log_file: Path) -> str:
    return "\n".join([
        f"# Serving `{model}`", "",
        f"- OpenAI base URL: `{base_url}`",
        f"- pid {pid}; stop it with `kill {pid}` (sessions are on disk after every request)",
        f"- log: `{log_file}`", "",
        "```python",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base_url}", api_key="unused")',
        "print(client.models.list())",
        "```",
    ])  # fmt: skip


@flow(name="serve", log_prints=True)
def serve_model(
    model: str | None = None, port: int = 8000, max_batch: int = 8, max_context: int = 65536
) -> dict[str, Any]:
    """Serve `model` (default: the newest export under the run root) on 127.0.0.1:`port`."""
    run_root, mlflow_uri = served_location()
    source = model or str(latest_export(run_root))
    config = ServeConfig(model=source, state_dir=run_root / "serve" / f"port-{port}", port=port,
                         max_batch=max_batch, max_context=max_context)  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri or default_mlflow_uri(run_root)}
    log_file = run_root / ".logs" / f"serve-{port}.log"
    launched = launch(config, log_file, env)
    print(f"serving {source} at {launched.base_url} (pid {launched.pid}, log {log_file})")
    if FlowRunContext.get() is not None:
        create_markdown_artifact(summary_markdown(source, launched.base_url, launched.pid,
                                                  log_file), key="serve")  # fmt: skip
    return {"model": source, "base_url": launched.base_url, "pid": launched.pid,
            "state_dir": str(config.state_dir), "log": str(log_file)}  # fmt: skip
