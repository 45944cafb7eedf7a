"""`python -m flows up`: Prefect server + MLflow server on 127.0.0.1, then `flows deploy` (the
work pool, limits, deployments and automation), then a worker for the pool; stopped together on
Ctrl-C/SIGTERM. Each service runs in its own process group and is stopped by pid.

This supervisor only starts, watches and stops its children, so it imports none of torch, MLflow
or Prefect (tests/flows/test_up.py checks): the experiment it prints the address of is created
by a short-lived child process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from flows.choices import POOL_NAME
from flows.env import UI_ENV, prepare_env
from flows.links import runs_table_url
from flows.torchrun import stop_group

# Run in a child process: the experiment of the bring-ups (created when missing, marked as
# model training), its id printed. Loading MLflow here would triple this supervisor's memory.
_ENSURE_EXPERIMENT = """
import sys
from pathlib import Path
from mlflow import MlflowClient
from flows.config import PipelineConfig
from flows.tracking import ensure_experiment
root = Path(sys.argv[1])
name = PipelineConfig.model_fields["name"].default
print(ensure_experiment(MlflowClient(f"sqlite:///{root}/mlflow.db"), name, root))
"""


def ensure_bringup_experiment(run_root: Path, env: dict[str, str]) -> str:
    """The id of the bring-ups' MLflow experiment in `run_root`'s store (see `_ENSURE_EXPERIMENT`)."""
    done = subprocess.run(
        [sys.executable, "-c", _ENSURE_EXPERIMENT, str(run_root)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"creating the MLflow experiment failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port`. SO_REUSEADDR, as the servers bind: connections of a
    stack just stopped (TIME_WAIT) do not make the port taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """One child process group writing to `<log_dir>/<name>.log`."""

    name: str
    command: list[str]
    env: dict[str, str]
    health_url: str | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll `health_url` until it answers 200; an exited process or the timeout is an error."""
        assert self.proc is not None and self.health_url is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode}; see its log"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not answer {self.health_url} within {timeout_s:.0f}s")

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace_s)


def stack_env(run_root: Path, prefect_port: int, mlflow_port: int) -> dict[str, str]:
    """The environment of the deploy step and the worker (and so of every flow run the worker
    starts): the run root's Prefect home, the stack's API and its MLflow UI for links."""
    env = prepare_env(run_root, dict(os.environ))
    api = f"http://127.0.0.1:{prefect_port}/api"
    return {**env, "PREFECT_API_URL": api, UI_ENV: f"http://127.0.0.1:{mlflow_port}"}


def servers(run_root: Path, prefect_port: int, mlflow_port: int) -> list[Service]:
    """The Prefect and MLflow servers, started side by side."""
    env = prepare_env(run_root, dict(os.environ))
    api = f"http://127.0.0.1:{prefect_port}/api"
    # the browser UI asks the server where its API is; without this it answers port 4200
    prefect_env = {**env, "PREFECT_UI_API_URL": api}
    # MLflow 3's server also starts job workers (GenAI scorers, periodic tasks) by default:
    # nothing the runs table, charts and artifacts use, so one web worker and no jobs
    mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    db = f"sqlite:///{run_root}/mlflow.db"
    return [
        Service(
            "prefect-server",
            [sys.executable, "-m", "prefect", "server", "start",
             "--host", "127.0.0.1", "--port", str(prefect_port)],
            prefect_env,
            f"{api}/health",
        ),
        Service(
            "mlflow-server",
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--backend-store-uri", db,
             "--artifacts-destination", str(run_root / "mlartifacts"), "--workers", "1"],
            mlflow_env,
            f"http://127.0.0.1:{mlflow_port}/health",
        ),
    ]  # fmt: skip


def deploy_command(run_root: Path, deploy_flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "flows", "deploy", "--run-root", str(run_root), *deploy_flags]


def worker(env: dict[str, str]) -> Service:
    """One process worker for the pool: it polls the server and starts each flow run in a
    process of its own."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL_NAME,
               "--type", "process", "--name", f"{POOL_NAME}-worker"]  # fmt: skip
    return Service("worker", command, env)


def run_deploy(run_root: Path, deploy_flags: list[str], env: dict[str, str], log_dir: Path) -> str:
    """`flows deploy` as a short-lived child (it imports the flows, and with them torch, which
    this supervisor must not hold); its output is appended to `deploy.log`. Returns its last line."""
    done = subprocess.run(deploy_command(run_root, deploy_flags), env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    with open(log_dir / "deploy.log", "a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"flows deploy failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def up(run_root: Path, prefect_port: int, mlflow_port: int, deploy_flags: list[str]) -> int:
    """Start everything, print the UIs, block until SIGINT/SIGTERM, stop everything."""
    taken = [p for p in (prefect_port, mlflow_port) if not port_free(p)]
    if taken or prefect_port == mlflow_port:
        print(
            f"flows up: port {taken[0] if taken else prefect_port} is taken on 127.0.0.1; "
            "choose another with --prefect-port/--mlflow-port",
            file=sys.stderr,
        )
        return 2
    run_root.mkdir(parents=True, exist_ok=True)
    env = prepare_env(run_root, dict(os.environ))
    # before the server opens the store: the runs table has an address to print from the start
    experiment_id = ensure_bringup_experiment(run_root, env)
    stack_servers = servers(run_root, prefect_port, mlflow_port)
    log_dir = run_root / ".logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started: list[Service] = []
    try:
        for service in stack_servers:  # side by side: they come up in the time of the slower
            service.start(log_dir)
            started.append(service)
        for service in stack_servers:
            service.wait_healthy(120)
        env = stack_env(run_root, prefect_port, mlflow_port)
        print(run_deploy(run_root, deploy_flags, env, log_dir), flush=True)
        pool_worker = worker(env)
        pool_worker.start(log_dir)
        started.append(pool_worker)
        mlflow_ui = f"http://127.0.0.1:{mlflow_port}"
        print(f"Prefect UI: http://127.0.0.1:{prefect_port}", flush=True)
        print(f"MLflow UI:  {mlflow_ui}", flush=True)
        print(f"MLflow runs: {runs_table_url(mlflow_ui, experiment_id)}", flush=True)
        print(
            f"In another shell: export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api\n"
            "  then: prefect deployment run bringup/bringup -p preset=debug_tiny --watch",
            flush=True,
        )
        print(f"logs in {log_dir}; Ctrl-C stops all three", flush=True)
        while not stopping:
            dead = [s for s in started if s.proc is not None and s.proc.poll() is not None]
            if dead:
                print(f"flows up: {dead[0].name} exited ({dead[0].proc.returncode}); see "
                      f"{log_dir / dead[0].name}.log; stopping", file=sys.stderr, flush=True)  # fmt: skip
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for service in reversed(started):
            service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("flows up: stopped", flush=True)
