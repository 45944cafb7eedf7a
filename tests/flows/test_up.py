"""`python -m flows up`: a taken port is refused up front. Every stack of the served end-to-end
tests is a `flows up` (tests/flows/test_served_e2e.py `serving`): it checks the printed UIs and
that SIGTERM stops all three services and leaves nothing behind."""

import socket
import subprocess
import sys

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


def test_the_supervisor_loads_neither_torch_nor_mlflow_nor_prefect():
    """`flows up` only starts, watches and stops the others (the served tests check its RSS)."""
    probe = ("import sys, flows.cli, flows.up; flows.cli.build_parser(); "
             "print(sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
