"""`Server`: the served model, its session store, the engine and the metrics, wired together.

`open_server(config)` checks and loads everything before anything listens: the model (path or
MLflow URI), its tokenizer and chat template, and the state directory, which one server at a
time may own (a lock file, released by the OS however the server dies).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from ttt_core import PretrainedOutputs

from .config import ServeConfig
from .engine import Engine, empty_state
from .errors import ServeError, ServeInputError
from .metrics import Metrics
from .sessions import SessionStore
from .source import (
    ServedModel,
    check_export_dir,
    is_mlflow_uri,
    load_served_model,
    resolve_device,
)

LOCK_FILE = "serve.lock"


@dataclass
class Server:
    config: ServeConfig
    served: ServedModel
    store: SessionStore
    engine: Engine
    metrics: Metrics
    lock: FileLock
    started: int

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def template(self):
        return self.served.template

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ServeError(404, f"model {model!r} is not served here; this server serves "
                             f"{self.name!r} (GET /v1/models)", param="model",
                             code="model_not_found")  # fmt: skip

    def fresh(self, session_id: str | None) -> bool:
        """Whether the request starts a sequence (no session, or one that has seen nothing)."""
        return session_id is None or self.store.info(session_id).tokens_seen == 0

    def encode(self, text: str, *, fresh: bool) -> list[int]:
        """Text to ids; a fresh sequence starts with BOS, as every training document does."""
        tok = self.served.tokenizer
        return [tok.bos_id, *tok.encode(text)] if fresh else tok.encode(text)

    def model_card(self) -> dict[str, Any]:
        cfg = self.served.model.config
        return {"id": self.name, "object": "model", "created": self.started,
                "owned_by": "ttt-bringup", "max_context": self.config.max_context,
                "mixers": sorted(set(cfg.mixers)), "num_params": cfg.num_params()}  # fmt: skip

    def close(self) -> None:
        self.lock.release()


def open_server(config: ServeConfig) -> Server:
    """Everything `config` names, loaded and checked; the state directory locked."""
    state_dir = Path(config.state_dir)
    if not is_mlflow_uri(config.model):
        check_export_dir(Path(config.model))  # before anything is written
    if state_dir.exists() and not state_dir.is_dir():
        raise ServeInputError(f"--state-dir {state_dir}: exists and is not a directory")
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(state_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ServeInputError(
            f"--state-dir {state_dir}: another server is using it (lock {lock.lock_file})"
        ) from None
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        served = load_served_model(config.model, state_dir, device, config.served_model_name)
        model = served.model
        store = SessionStore(
            state_dir,
            hot=config.hot_sessions,
            new_state=lambda: empty_state(model),
            model_config=model.config.model_dump(),
            device=str(device),
            model_digest=PretrainedOutputs(served.directory).digest(),
        )
        metrics = Metrics()
        engine = Engine(model, served.tokenizer, store, max_batch=config.max_batch,
                        max_context=config.max_context, prefill_chunk=config.prefill_chunk,
                        metrics=metrics)  # fmt: skip
    except BaseException:
        lock.release()
        raise
    return Server(config, served, store, engine, metrics, lock, int(time.time()))
