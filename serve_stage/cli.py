"""Serve an export over OpenAI's HTTP API, with sessions that keep each conversation's state.

`python -m serve_stage --model EXPORT --state-dir DIR [--host H] [--port P]` starts an
OpenAI-compatible HTTP server (FastAPI on uvicorn): /v1/models, /v1/completions,
/v1/chat/completions (streaming with `"stream": true`), /v1/sessions/{id}, /health, /metrics.
Every field of `ServeConfig` is a flag (`--config FILE.yaml` under them). Everything is loaded
and checked before it listens: a bad model, state directory or flag is one line on stderr and
exit 2. SIGINT/SIGTERM finish the current step and stop; session states are on disk after
every request, so a server killed any way restarts on the same --state-dir where it was.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from stage_common.config_cli import CliParser, ConfigFileError, ConfigFlags, describe_refusal
from stage_common.faults import run_cli

from .config import ServeConfig
from .errors import ServeInputError


def build_parser() -> CliParser:
    parser = CliParser(prog="python -m serve_stage", description=__doc__.splitlines()[0])
    ConfigFlags(parser, ServeConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        from .run import serve

        serve(args.config_flags.config(args))
        return 0

    refusals = (ServeInputError, ValidationError, ConfigFileError)
    return run_cli("serve_stage", body, refusals, describe=describe_refusal)
