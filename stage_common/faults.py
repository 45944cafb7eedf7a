"""The failure rule every CLI of the project follows, and the top-level handler that enforces it.

A command checks everything it can before it writes anything. When it must fail later, it fails
with one line naming the path and the cause, its temp files removed and earlier outputs left as
they were. Exit codes: 2 bad input (fix the command or its inputs), 3 divergence (training),
4 environment (no space left, permission denied, a read-only or failing filesystem).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_ENVIRONMENT = 2, 3, 4

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Errors of the machine rather than of the command: retrying elsewhere or later can succeed.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE}
)
_MB = 1_000_000


def _no_space_in(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `error`'s chain of causes (a serializer may fail because its
    write did, e.g. torch.save inside a checkpoint), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_no_space(error: BaseException) -> bool:
    return _no_space_in(error) is not None


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path | str) -> Path:
    """The mount point of the filesystem `path` is (or would be) on."""
    path = _existing_ancestor(Path(path))
    while not os.path.ismount(path):
        path = path.parent
    return path


def output_dir_problem(path: Path | str) -> str | None:
    """Why `path` cannot be (or become) a directory to write into, or None; for checking an
    output before any work. A missing one is probed by creating and removing its first missing
    component (nothing is left behind)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"{path}: exists and is not a directory"
        target = path
    else:
        target = _existing_ancestor(path)
        if not target.is_dir():
            return f"{path}: cannot be created ({target} is not a directory)"
        first_missing = Path(os.path.abspath(path))
        while first_missing.parent != target:
            first_missing = first_missing.parent
        try:
            first_missing.mkdir()
            first_missing.rmdir()
        except OSError as e:
            return f"{path}: cannot be created ({e.strerror or e})"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{path}: not writable ({target}: permission denied)"
    return None


def free_bytes(path: Path | str) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def _megabytes(n_bytes: float) -> str:
    mb = n_bytes / _MB
    return f"{mb:.1f}" if mb < 10 else f"{mb:,.0f}"


class NoSpaceError(OSError):
    """ENOSPC while writing `path`; `needed_bytes` estimates what the whole write needs."""

    def __init__(self, path: Path | str, needed_bytes: float | None, hint: str = "") -> None:
        path = Path(path)
        try:
            free = f", {_megabytes(free_bytes(path))} MB free"
        except OSError:
            free = ""
        need = f"needs ~{_megabytes(needed_bytes)} MB" if needed_bytes else "needs more"
        message = f"no space left on {mount_point(path)} (writing {path}): {need}{free}"
        super().__init__(errno.ENOSPC, message + (f"; {hint}" if hint else ""), str(path))

    def __str__(self) -> str:
        return self.strerror


def one_line(text: str) -> str:
    """`text` with its lines joined: a refusal is always exactly one line."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def environment_fault(error: BaseException) -> str | None:
    """The one-line description of an environment failure (no space left, also as the cause of
    another error; an OSError of the machine), or None for anything else."""
    if isinstance(error, NoSpaceError):
        return str(error)
    no_space = _no_space_in(error)
    if no_space is not None:
        return str(NoSpaceError(no_space.filename or ".", None, "free space and rerun"))
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return None


def run_cli(
    prog: str,
    body: Callable[[], int],
    refusals: tuple[type[BaseException], ...],
    *,
    describe: Callable[[BaseException], str] = str,
    label: str = "error",
    quiet: bool = False,
) -> int:
    """Run a CLI's `body`; a refusal (one of `refusals`) becomes one line and exit 2, an
    environment OSError one line and exit 4. Other exceptions propagate with their traceback:
    they are bugs, not user errors. `quiet`: exit codes only (e.g. torchrun ranks other than 0)."""

    def say(message: str) -> None:
        if not quiet:
            print(f"{prog}: {one_line(message)}", file=sys.stderr, flush=True)

    try:
        return body()
    except refusals as e:
        fault = environment_fault(e)
        if fault is not None:
            say(fault)
            return EXIT_ENVIRONMENT
        say(f"{label}: {describe(e)}")
        return EXIT_BAD_INPUT
    except Exception as e:
        fault = environment_fault(e)
        if fault is None:
            raise
        say(fault)
        return EXIT_ENVIRONMENT
