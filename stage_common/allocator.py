"""Keep freed memory in the process instead of handing it back to the kernel (glibc).

A training or evaluation step frees and re-allocates the same large tensors every step. glibc
serves a block above its mmap threshold with a fresh mapping and unmaps it on free, and trims
the heap's free top back to the kernel, so the next step page-faults every such page in again:
at issue 28's op shape that was about 34,000 minor faults per forward + backward, and
`scripts/bench_train_step.py` ran the small_cpu step 10-25% faster without them
(docs/performance.md). `keep_freed_memory()` turns both off for the calling process; the
resident size then stays at its peak, which a trainer reaches every step anyway.

Set TTT_KEEP_FREED_MEMORY=0 to leave the C allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "TTT_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30
_state = "the C allocator's defaults"


def allocator_state() -> str:
    """What `keep_freed_memory` did in this process, or that it was not called."""
    return _state


def keep_freed_memory() -> str:
    """Configure glibc malloc for this process (no mmap'd blocks, trim only above 1 GiB of free
    heap top); returns (and `allocator_state` reports) a one-line account of what was done."""
    global _state
    _state = _configure()
    return _state


def _configure() -> str:
    if os.environ.get(ENV_VAR, "1") == "0":
        return f"C allocator left as is ({ENV_VAR}=0)"
    if not sys.platform.startswith("linux"):
        return f"C allocator left as is (not glibc: {sys.platform})"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return "C allocator left as is (no glibc mallopt)"
    refused = [name for name, param, value in (("M_MMAP_MAX", _M_MMAP_MAX, 0),
               ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
               if mallopt(param, value) != 1]  # fmt: skip
    if refused:
        return f"glibc mallopt refused {', '.join(refused)}"
    return "glibc malloc keeps freed memory (no mmap'd blocks, trim above 1 GiB)"
