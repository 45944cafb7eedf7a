"""`python -I parent_guard.py PARENT_PID -- COMMAND...`: exec COMMAND armed to get SIGTERM when
PARENT_PID dies, however it dies (SIGKILL and OOM included, when no cleanup code of the parent
runs). Linux `PR_SET_PDEATHSIG`; it survives `exec`. Elsewhere the command runs unarmed.

Run by path with `-I` (stdlib only, nothing from the package) so it starts in milliseconds.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 143


def arm_parent_death_signal() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: parent_guard.py PARENT_PID -- COMMAND [ARGS...]")
    parent, command = int(argv[0]), argv[2:]
    if sys.platform.startswith("linux"):
        arm_parent_death_signal()
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(EXIT_PARENT_GONE)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
