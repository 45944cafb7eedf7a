"""`ServeConfig`: what `python -m serve_stage` and the Prefect `serve` deployment start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ttt_core.validation import ConfigModel


class ServeConfig(ConfigModel):
    """One model served on one address; sessions live under `state_dir`."""

    model: str = Field(
        description="export directory (`python -m train_stage export`), or an MLflow URI of one: "
        "runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias>"
    )
    state_dir: Path = Field(description="sessions (and models fetched from MLflow) live here")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    served_model_name: str | None = Field(
        None, description="the `model` clients name; None: the export directory's name"
    )
    max_batch: int = Field(
        8, ge=1, description="rows decoded together, and requests that may wait; past it: 429"
    )
    max_context: int = Field(
        65536, ge=1, description="tokens a session (or request) may reach, generation included"
    )
    prefill_chunk: int = Field(
        2048, ge=1, description="prompt tokens prefilled at a time (bounds prefill memory)"
    )
    hot_sessions: int = Field(64, ge=1, description="session states kept in memory (LRU)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if present")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's default")
