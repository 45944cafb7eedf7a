"""Run a command (torchrun) in its own process group, stream its output, never orphan it.

`run_streaming` reads the child's merged stdout/stderr line by line and hands each line to a
callback as it arrives. Whatever ends the wait — the child exiting, an exception in the caller,
a SIGTERM to this process — the whole group gets SIGTERM, then SIGKILL after a grace period.
A non-zero exit raises `ProcessFailed` with the exit code (the worker's, under torchrun) and the
lines that explain it.
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
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.1)
        if not _group_alive(proc):
            break
    proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def _sigterm_raises() -> Iterator[None]:
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
) -> list[str]:
    """Run `command`; each output line goes to `on_line`. Returns the last lines on exit 0,
    raises `ProcessFailed` (naming `what`, default the program) otherwise."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with _sigterm_raises():
        proc = subprocess.Popen(
            list(command),
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
            # Workers outliving a dead launcher keep the pipe open, so EOF alone is not the end:
            # once the launcher has exited the group is stopped, which closes the pipe.
            while (line := _next_line(proc, lines, grace_s)) is not None:
                tail.append(line)
                on_line(line)
            proc.wait()
        finally:
            stop_group(proc, grace_s)
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


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]
