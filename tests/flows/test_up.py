"""`python -m flows up`: a taken port is refused up front. Every stack of the served end-to-end
tests is a `flows up` (tests/flows/test_served_e2e.py `serving`): it checks the printed UIs and
that SIGTERM stops all three services and leaves nothing behind."""

import socket

from flows.up import free_port
from tests.flows.helpers import flows_up


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = flows_up(tmp_path, port, free_port(), "--resume-paused")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"port {port} is taken" in out
    assert not (tmp_path / ".logs").exists()
