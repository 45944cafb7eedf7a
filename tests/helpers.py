"""Helpers any test package may use: running a CLI's `main` in this process as a user would."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# A wait in a test is for an observed event; this limit only turns a hang into a failure.
# Generous: on a 2-core machine shared with other work, a stage can take minutes.
HANG_GUARD_S = 900


def run_main(main: Callable[[list[str]], int], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a CLI's `main(argv)`; argparse exits are exit codes, and
    the trainer's SIGTERM/SIGINT handlers do not outlive the call."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    return code, out, err


class NoCapture:
    """Stands in for capsys where there is none (session and module fixtures)."""

    def readouterr(self) -> tuple[str, str]:
        return "", ""


def wait_for(
    condition: Callable[[], T],
    what: str,
    *,
    limit_s: float = HANG_GUARD_S,
    every_s: float = 0.01,
    process: subprocess.Popen | None = None,
) -> T:
    """Poll `condition()` every `every_s` until it returns something truthy (an observed event),
    and return that. `limit_s` only turns a hang into a failure naming `what`; a `process` the
    event depends on ending first fails at once, with the end of its output (when piped)."""
    deadline = time.monotonic() + limit_s
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            output = process.stdout.read()[-2000:] if process.stdout else ""
            raise AssertionError(f"the process ended before {what}: {output}")
        if time.monotonic() > deadline:
            if process is not None:
                process.kill()
            raise AssertionError(f"timed out after {limit_s:.0f}s waiting for {what}")
        time.sleep(every_s)
    return value
