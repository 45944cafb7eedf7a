"""`python -m serve_stage` as a child process on a free port of 127.0.0.1 (started by
`serve_stage.launch`), stopped by pid."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from flows.up import free_port
from serve_stage import ServeConfig, launch


class ServerProcess:
    """Starts at construction (`ServeConfig` fields as keywords, one torch thread) and returns
    once its /health answers."""

    def __init__(self, model: Path | str, state_dir: Path, **fields: Any):
        self.model, self.state_dir = str(model), Path(state_dir)
        self.fields = {"threads": 1, **fields}
        self.start()

    def start(self) -> None:
        config = ServeConfig(model=self.model, state_dir=self.state_dir, port=free_port(),
                             **self.fields)  # fmt: skip
        self.log = self.state_dir.parent / f"{self.state_dir.name}-{config.port}.log"
        launched = launch(config, self.log)
        self.proc, self.base = launched.process, launched.base_url.removesuffix("/v1")

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> bool:
        """SIGTERM; whether the server shut down in order (uvicorn finishes, closes the app's
        lifespan, then ends by the signal it was sent)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in (
            self.log.read_text()
        )
