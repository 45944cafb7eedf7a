"""Helpers any test package may use: running a CLI's `main` in this process as a user would."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence

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
