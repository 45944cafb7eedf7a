"""`python -m flows up`: a taken port is refused up front. Every stack of the served end-to-end
tests is a `flows up` (tests/flows/test_served_e2e.py `serving`): it checks the printed UIs and
that SIGTERM stops all three services and leaves nothing behind."""

import socket
import subprocess
import sys

from flows.up import free_port, port_free
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


def test_the_supervisor_loads_neither_torch_nor_mlflow_nor_prefect():
    """`flows up` only starts, watches and stops the others (the served tests check its RSS)."""
    probe = ("import sys, flows.cli, flows.up; flows.cli.build_parser(); "
             "print(sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_port_left_in_time_wait_by_a_stopped_stack_is_free():
    """A server that accepted a connection and stopped leaves it in TIME_WAIT on its side; the
    servers bind with SO_REUSEADDR, so `flows up` started again at once must not refuse."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its side of the connection waits in TIME_WAIT
    client.close()
    listener.close()
    assert port_free(port)
    with socket.socket() as busy:  # a listener, though, is refused
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert not port_free(port)
