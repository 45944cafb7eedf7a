"""`serve(config)`: open the server, then run its app on uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import uvicorn

from .app import build_app
from .config import ServeConfig
from .server import open_server


def serve(config: ServeConfig) -> None:
    server = open_server(config)
    try:
        cfg = server.served.model.config
        print(
            f"[serve] {server.name} ({'+'.join(sorted(set(cfg.mixers)))}, "
            f"{cfg.num_params() / 1e6:.1f}M params) from {server.served.directory}; sessions in "
            f"{server.store.directory}; OpenAI base URL http://{config.host}:{config.port}/v1",
            flush=True,
        )
        uvicorn.run(build_app(server), host=config.host, port=config.port, log_level="info",
                    timeout_graceful_shutdown=5)  # fmt: skip
    finally:
        server.close()
