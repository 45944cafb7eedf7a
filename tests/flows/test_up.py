"""`python -m flows up`: a taken port is refused up front; SIGTERM stops all three services."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from flows.up import free_port
from tests.flows.helpers import wait_for


def flows_up(tmp_path, prefect_port, mlflow_port):
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "up", "--run-root", str(tmp_path),
         "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port),
         "--resume-paused"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = flows_up(tmp_path, port, free_port())
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"port {port} is taken" in out
    assert not (tmp_path / ".logs").exists()


def children_of(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_up_starts_both_servers_and_sigterm_leaves_nothing_behind(tmp_path):
    prefect_port = free_port()
    proc = flows_up(tmp_path, prefect_port, free_port())
    lines = []
    try:
        deadline = time.monotonic() + 170
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("logs in") or not line:
                break
        assert any(line.startswith("Prefect UI: http://127.0.0.1:") for line in lines), lines
        assert any(line.startswith("MLflow UI:  http://127.0.0.1:") for line in lines), lines
        # the browser UI must be told the API of the port actually served (not Prefect's 4200)
        with urllib.request.urlopen(f"http://127.0.0.1:{prefect_port}/ui-settings") as reply:
            assert json.load(reply)["api_url"] == f"http://127.0.0.1:{prefect_port}/api"
        descendants = children_of(proc.pid)
        assert len(descendants) >= 3
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0 and "stopped" in rest
        # orphans are reaped by init on its own time: poll, the limit only guards a hang
        wait_for(lambda: not [p for p in descendants if running(p)], 60, "the services to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
