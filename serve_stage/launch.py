"""Start `python -m serve_stage` as a process of its own and wait until it answers.

For callers that start a server and go on (the Prefect `serve` deployment): the server runs in
a new session, so it outlives the caller, and logs to `log_file`. `launch` returns once
`GET /health` answers, or raises `ServeInputError` with the end of the log when the server
exits first (a bad model, a busy state directory or port).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .cli import build_parser
from .config import ServeConfig
from .errors import ServeInputError

START_GUARD_S = 600  # turns a hang into an error; loading a large model takes a while


@dataclass(frozen=True)
class Launched:
    process: subprocess.Popen
    base_url: str  # OpenAI's base URL: http://host:port/v1
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def command(config: ServeConfig) -> list[str]:
    """The command line that serves `config`."""
    flags = build_parser().get_default("config_flags").command(config)
    return [sys.executable, "-m", "serve_stage", *flags]


def launch(config: ServeConfig, log_file: Path, env: dict[str, str] | None = None) -> Launched:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(command(config), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env or os.environ.copy())  # fmt: skip
    base = f"http://{config.host}:{config.port}"
    deadline = time.monotonic() + START_GUARD_S
    while True:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:]
            raise ServeInputError(f"the server exited with {proc.returncode} before it answered: "
                                  f"{tail[0] if tail else '(no output)'} (log {log_file})")  # fmt: skip
        try:
            health = httpx.get(f"{base}/health", timeout=2)
            if health.status_code == 200 and health.json().get("pid") == proc.pid:
                return Launched(proc, f"{base}/v1", log_file)  # ours, not another's
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise ServeInputError(
                f"the server did not answer in {START_GUARD_S} s (log {log_file})"
            )
        time.sleep(0.2)
