"""A console that can disappear without taking the run with it.

When whoever reads a rank's stdout/stderr goes away (the flow process that launched torchrun was
killed, `| head` exited), the next progress line raises `BrokenPipeError`: without this, that
kills the rank before it can save. `keep_running_without_console` swaps `sys.stdout` and
`sys.stderr` for wrappers that, on a broken pipe, point the stream's file descriptor at
/dev/null and carry on: metrics.jsonl and MLflow still record everything, and a SIGTERM that
follows is handled as usual (save, exit 143).
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO


class DetachingStream(io.TextIOBase):
    """Writes through to `stream` until its reader is gone, then to /dev/null."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._detach()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._detach()

    def _detach(self) -> None:
        """Point the descriptor at /dev/null, so the bytes still buffered flush somewhere."""
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True


def keep_running_without_console() -> None:
    """Install `DetachingStream` over `sys.stdout` and `sys.stderr` (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, DetachingStream):
            setattr(sys, name, DetachingStream(stream))
