"""`python -m serve_stage` as a child process on a free port of 127.0.0.1, stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from ..helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts at construction and returns once /health answers."""

    def __init__(self, model: Path | str, state_dir: Path, *flags: str):
        self.model, self.state_dir, self.flags = str(model), Path(state_dir), flags
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.state_dir.parent / f"{self.state_dir.name}-{self.port}.log"
        argv = [sys.executable, "-m", "serve_stage", "--model", self.model, "--state-dir",
                str(self.state_dir), "--port", str(self.port), "--threads", "1", *self.flags]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, f"the server on {self.base} (log {self.log})", every_s=0.2,
                 process=self.proc)  # fmt: skip

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

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
