"""The training launcher: lines stream as they come, failures say why, no process outlives it."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import PipelineConfig
from flows.record import pid_alive
from flows.tasks import retry_unless_deterministic, train_task
from flows.torchrun import (
    ProcessFailed,
    explain,
    run_streaming,
    wait_for_previous_launch,
    worker_exit_code,
)
from tests.flows.helpers import exited


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_lines_reach_the_callback_while_the_child_runs(tmp_path):
    """The child prints its second line only once the callback has seen the first (an observed
    event, no clock): a launcher that delivered lines at exit would leave it waiting."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time\nprint('line 0', flush=True)\n"
        f"for _ in range(3000):  # a hang guard only\n    if os.path.exists({str(go)!r}): break\n"
        "    time.sleep(0.1)\nelse:\n    print('line 0 was not delivered', flush=True)\n"
        "print('line 1', flush=True)"
    )
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "line 0":
            go.touch()

    run_streaming(python(code), on_line)
    assert seen == ["line 0", "line 1"]


def test_a_refusal_surfaces_its_line_and_exit_code():
    code = (
        "import sys\nprint('loading', flush=True)\n"
        "print('train_stage: refused: data directory /x is unusable', file=sys.stderr)\n"
        "sys.exit(2)"
    )
    with pytest.raises(ProcessFailed) as info:
        run_streaming(python(code), lambda _line: None, what="train_stage")
    assert info.value.exit_code == 2
    assert "exit code 2" in str(info.value) and "refused" in str(info.value)
    assert info.value.explanation == ["train_stage: refused: data directory /x is unusable"]


def test_a_crash_surfaces_the_workers_traceback_not_torchruns():
    lines = [
        "step 1 loss 5.0",
        "Traceback (most recent call last):",
        '  File "trainer.py", line 3, in step',
        "RuntimeError: CUDA out of memory",
        "E1125 12:00:00 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)"
        " local_rank: 0 (pid: 7) of binary: python",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "  exitcode  : 1 (pid: 7)",
    ]
    assert explain(lines)[-1] == "RuntimeError: CUDA out of memory"
    assert explain(lines)[0] == "Traceback (most recent call last):"
    assert worker_exit_code(["x", "  exitcode  : 3 (pid: 9)"], 1) == 3
    assert worker_exit_code(["x"], 1) == 1


def failed_state(error: BaseException):
    return type("S", (), {"data": error})()


@pytest.mark.parametrize(("code", "retry"), [(1, True), (-9, True), (2, False), (3, False)])
def test_refused_and_diverged_are_not_retried(code, retry):
    error = ProcessFailed("train_stage", code, ["why"])
    assert retry_unless_deterministic(None, None, failed_state(error)) is retry
    assert retry_unless_deterministic(None, None, failed_state(OSError("disk"))) is True


def test_workers_left_behind_are_stopped_when_the_launcher_exits(tmp_path):
    pid_file = tmp_path / "pid"
    code = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
    )
    run_streaming(python(code), lambda _line: None, grace_s=2)
    assert exited(int(pid_file.read_text()))  # stopped before run_streaming returned


def test_an_error_in_the_caller_stops_the_whole_group(tmp_path):
    """Child and grandchild would sleep an hour: run_streaming returning at all, with both gone,
    shows the group was stopped (no clock involved)."""
    pid_file = tmp_path / "pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True); time.sleep(3600)"
    )

    def cancel(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt  # what a Prefect cancel/timeout looks like from here

    with pytest.raises(KeyboardInterrupt):
        run_streaming(python(code), cancel, grace_s=2)
    assert exited(int(pid_file.read_text()))


@pytest.mark.slow
def test_train_task_refusal_through_torchrun_is_not_retried(tmp_path: Path):
    """The real thing: torchrun + train_stage refuse a missing data dir; Prefect runs it once."""
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path)
    shards = cfg.stage_dir("shards")
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text("{}")  # present for the cache key, unusable for training
    state = train_task.with_options(retries=2, retry_delay_seconds=0)(
        cfg=cfg.train_config(), nproc=1, mlflow=None, return_state=True
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ProcessFailed) and error.exit_code == 2
    assert "train_stage refused with exit code 2" in str(error)
    assert "train_stage: refused:" in str(error) and "manifest" in str(error)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_task_run(state.state_details.task_run_id).run_count == 1


def test_a_killed_caller_leaves_no_orphans_and_the_next_launch_waits_for_them(tmp_path):
    """SIGKILL the process running `run_streaming`: its child gets SIGTERM from the kernel (no
    cleanup code of the caller runs), and a new launch with the same launch file waits for the
    old group to finish what it does on SIGTERM before it starts. The child's SIGTERM handler
    ends only once the waiter has said it waits (an observed event), and without the kernel's
    SIGTERM it would sleep an hour, longer than the waiter's grace: no clock decides."""
    launch, stopped, go = tmp_path / "launch", tmp_path / "stopped", tmp_path / "go"
    child = (
        "import os, signal, sys, time\n"
        "def on_term(*_):\n"
        f"    while not os.path.exists({str(go)!r}):  # a checkpoint being saved\n"
        "        time.sleep(0.05)\n"
        f"    open({str(stopped)!r}, 'w').write(str(time.time())); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print(os.getpid(), flush=True); time.sleep(3600)"
    )
    caller = (
        "import sys\nfrom pathlib import Path\nfrom flows.torchrun import run_streaming\n"
        f"run_streaming([sys.executable, '-c', {child!r}], lambda l: print(l, flush=True), "
        f"launch_file=Path({str(launch)!r}))"
    )
    proc = subprocess.Popen(python(caller), stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    assert launch.is_file()
    proc.kill()
    proc.wait()
    seen: list[str] = []

    def log(line: str) -> None:
        seen.append(line)
        go.touch()

    wait_for_previous_launch(launch, 3600, log)
    second = "import time; print(time.time())"
    run_streaming(python(second), seen.append, grace_s=30, launch_file=launch)
    assert "is still running" in seen[0]
    assert float(stopped.read_text()) <= float(seen[-1])  # it had saved before the second began
    assert not pid_alive(grandchild) and not launch.exists()


def test_a_launch_file_naming_a_reused_pid_is_ignored(tmp_path):
    other = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    launch = tmp_path / "launch"
    launch.write_text(f"{other.pid} 1\n")  # a live group leader, but not the recorded start time
    try:
        said: list[str] = []
        wait_for_previous_launch(launch, 0, said.append)  # would log, then stop the group
        assert said == [] and other.poll() is None
    finally:
        other.kill()
        other.wait()
