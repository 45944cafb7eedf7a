"""Run a command (torchrun) in its own process group, stream its output, never orphan it.

`run_streaming` reads the child's merged stdout/stderr line by line and hands each line to a
callback as it arrives. Whatever ends the wait — the child exiting, an exception in the caller,
a SIGTERM to this process — the whole group gets SIGTERM, then SIGKILL after a grace period.
When this process is killed outright (SIGKILL, OOM), the child gets SIGTERM from the kernel
(`parent_guard`); `wait_for_previous_launch` on the same `launch_file` waits for that group to
end before the next launch. A non-zero exit raises `ProcessFailed` with the exit code (the worker's, under
torchrun) and the lines that explain it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# train_stage exit codes that a retry cannot fix: refused before any work, diverged.
NOT_RETRYABLE = {2: "refused", 3: "diverged"}
TAIL_LINES = 400
PARENT_GUARD = Path(__file__).with_name("parent_guard.py")
_WORKER_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)|failed \(exitcode: (-?\d+)\)")
_AGENT_FAILURE = re.compile(r"torch/distributed/elastic/.*failed \(exitcode: -?\d+\)")


class ProcessFailed(RuntimeError):
    """The child exited non-zero. `exit_code` is the worker's exit code when torchrun reported
    one, else the child's own."""

    def __init__(self, command: str, exit_code: int, explanation: list[str]):
        self.exit_code = exit_code
        self.explanation = explanation
        kind = NOT_RETRYABLE.get(exit_code, "failed")
        lines = "\n".join(f"  | {line}" for line in explanation)
        super().__init__(f"{command} {kind} with exit code {exit_code}:\n{lines}")


class Terminated(BaseException):
    """This process got SIGTERM while a child ran (the child group was stopped first)."""


def worker_exit_code(lines: Sequence[str], returncode: int) -> int:
    """The first worker exit code torchrun reports in its failure banner, else `returncode`."""
    for line in lines:
        match = _WORKER_EXIT.search(line)
        if match:
            return int(match.group(1) or match.group(2))
    return returncode


def explain(lines: Sequence[str], limit: int = 20) -> list[str]:
    """The lines that say why the child failed: its refusal line, else its last traceback (the
    worker's, not torchrun's own `ChildFailedError` report), else the last `limit` lines."""
    own = list(lines)
    for i, line in enumerate(own):
        if _AGENT_FAILURE.search(line):
            own = own[:i]
            break
    own = [line for line in own if line.strip()]
    refusals = [line for line in own if ": refused: " in line]
    if refusals:
        return refusals[-1:]
    starts = [i for i, line in enumerate(own) if line.startswith("Traceback (most recent call")]
    if starts:
        return own[starts[-1] :][-limit:]
    return own[-limit:] or list(lines)[-limit:]


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace_s`; reap the child."""

    def alive() -> bool:
        proc.poll()
        return _group_exists(proc.pid)

    _stop_group_id(proc.pid, grace_s, alive)
    proc.wait()


def _stop_group_id(pgid: int, grace_s: float, alive: Callable[[], bool]) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)
        if not alive():
            return


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (`/proc/PID/stat` field 22): with the
    pid, it names one process even after the pid is reused. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def wait_for_previous_launch(launch_file: Path, grace_s: float, log: Callable[[str], None]) -> None:
    """If the group recorded in `launch_file` by an earlier `run_streaming` is still running (its
    caller was killed; its processes got SIGTERM and may be saving a checkpoint), wait up to
    `grace_s` for it to end, then stop it. A recorded pid now naming another process is ignored."""
    try:
        pgid_text, started = launch_file.read_text().split()
        pgid = int(pgid_text)
    except (OSError, ValueError):
        return
    leader_start = _start_time(pgid)
    if leader_start is not None and leader_start != started:
        return  # the pid was reused: that group is not ours
    if not _group_exists(pgid):
        return
    log(f"an earlier launch (process group {pgid}) is still running; waiting up to "
        f"{grace_s:.0f}s for it to stop")  # fmt: skip
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_exists(pgid):
        time.sleep(0.2)
    _stop_group_id(pgid, grace_s, lambda: _group_exists(pgid))


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` in the main thread, so cleanup runs before we exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(f"signal {signum} while a child process ran")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_streaming(
    command: Sequence[str],
    on_line: Callable[[str], None],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    grace_s: float = 30.0,
    what: str | None = None,
    launch_file: Path | None = None,
) -> list[str]:
    """Run `command`; each output line goes to `on_line`. Returns the last lines on exit 0,
    raises `ProcessFailed` (naming `what`, default the program) otherwise. `launch_file` records
    the running group for `wait_for_previous_launch`, which a caller runs before the next
    launch (and before touching the files that group may still write)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with sigterm_raises():
        proc = subprocess.Popen(
            [sys.executable, "-I", str(PARENT_GUARD), str(os.getpid()), "--", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: signals reach every worker
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
        reader.start()
        try:
            if launch_file is not None:
                launch_file.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
            # Workers outliving a dead launcher keep the pipe open, so EOF alone is not the end:
            # once the launcher has exited the group is stopped, which closes the pipe.
            while (line := _next_line(proc, lines, grace_s)) is not None:
                tail.append(line)
                on_line(line)
            proc.wait()
        finally:
            stop_group(proc, grace_s)
            if launch_file is not None:
                launch_file.unlink(missing_ok=True)
            reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    if proc.returncode != 0:
        last = list(tail)
        name = what or Path(command[0]).name
        raise ProcessFailed(name, worker_exit_code(last, proc.returncode), explain(last))
    return list(tail)


def _read_lines(proc: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.rstrip("\n"))
    lines.put(None)


def _next_line(
    proc: subprocess.Popen, lines: queue.Queue[str | None], grace_s: float
) -> str | None:
    """The next output line; None at EOF. Stops leftover workers once the launcher is gone."""
    while True:
        try:
            return lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                stop_group(proc, grace_s)
