"""A served debug_tiny export (random weights, the session's tokenizer) for the HTTP tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_export
from .server_process import ServerProcess


@pytest.fixture(scope="session")
def ttt_export(tmp_path_factory, debug_tiny_data) -> Path:
    return write_export(tmp_path_factory.mktemp("serve") / "tiny-ttt", debug_tiny_data.tokenizer,
                        "ttt_linear")  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, ttt_export):
    """One server for the module: --max-batch 2, --max-context 100000."""
    proc = ServerProcess(ttt_export, tmp_path_factory.mktemp("state"), max_batch=2,
                         max_context=100_000)  # fmt: skip
    yield proc
    assert proc.terminate()
