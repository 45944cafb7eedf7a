"""The `serve` flow: with no model it serves the newest export under the run root, from any
directory, and the server it leaves running answers the OpenAI client."""

from __future__ import annotations

import os
import signal

import pytest

from flows.env import RUN_ROOT_ENV
from flows.model_server import latest_export, serve_model
from flows.request import InvalidRequest
from flows.up import free_port

from ..serve_stage.helpers import write_export


def test_the_serve_flow_serves_the_newest_export(tmp_path, monkeypatch, debug_tiny_data):
    root = tmp_path / "runs"
    with pytest.raises(InvalidRequest, match="no export under"):
        latest_export(root)
    write_export(root / "old" / "export", debug_tiny_data.tokenizer, "attention")
    newest = write_export(root / "new" / "export", debug_tiny_data.tokenizer, "ttt_linear")
    monkeypatch.setenv(RUN_ROOT_ENV, str(root))
    monkeypatch.chdir(tmp_path)  # a user's own directory, not the repository
    result = serve_model.fn(port=free_port())
    try:
        import openai

        client = openai.OpenAI(base_url=result["base_url"], api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["export"]
        card = client.models.retrieve("export")
        assert card.model_extra["mixers"] == ["ttt_linear"]  # the newest one
        reply = client.completions.create(model="export", prompt="x", max_tokens=3)
        assert reply.usage.completion_tokens <= 3
        assert result["model"] == str(newest)
        assert result["state_dir"] == str(
            root / "serve" / f"port-{result['base_url'].split(':')[2].split('/')[0]}"
        )
    finally:
        os.kill(result["pid"], signal.SIGTERM)
