"""serve_stage: an OpenAI-compatible HTTP server for the project's exports, with continuous
batching and persistent constant-size sessions (docs/serving.md).

Layout, requests apart from the engine apart from the HTTP app: `config` (ServeConfig),
`protocol` (OpenAI request/response bodies), `engine` (the batching loop), `sessions` (the
session store), `text` (ids to text, stop strings), `chat_template`, `source` (the model, local
or from MLflow), `metrics`, `server` (all of it wired), `app` (FastAPI), `run` and `cli`, and `launch` (start
a server process and wait for it).
"""

from .config import ServeConfig
from .engine import Engine, Job, Outcome, SamplingParams
from .errors import ServeError, ServeInputError
from .launch import Launched, command, launch
from .server import Server, open_server

__all__ = [
    "Engine",
    "Job",
    "Launched",
    "Outcome",
    "SamplingParams",
    "ServeConfig",
    "ServeError",
    "ServeInputError",
    "Server",
    "command",
    "launch",
    "open_server",
]
