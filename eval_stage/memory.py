"""Peak memory of one call, beyond what was in use when it started.

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the bytes
allocated before the call (tensors only; the caching allocator's reserve is not counted).

CPU on Linux: the process's peak resident set size. Before the call, garbage is collected and
glibc's `malloc_trim(0)` hands the pages of freed heap chunks back to the kernel (otherwise
memory the allocator kept from earlier calls would be reused without any change in RSS, and
every call after the first would read ~0); then the kernel's high-water mark `VmHWM` is reset
to the current RSS by writing `5` to /proc/self/clear_refs. The result is `VmHWM` after the
call minus `VmRSS` before it: page-granular, including the allocator's overhead, clamped at 0
(the kernel's RSS counters may lag by a few pages). Elsewhere: the increase of `ru_maxrss`, a
lower bound (0 unless the call goes past the process's earlier peak). The method used is
returned with the number.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from .device import synchronize

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class PeakMemory(NamedTuple):
    bytes: int
    method: str


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{_STATUS} has no {field} line")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """glibc only (musl and others have no `malloc_trim`): return freed heap pages to the OS."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, kB elsewhere


def peak_memory(fn: Callable[[], object], device: torch.device) -> PeakMemory:
    """Run `fn` once and return its peak extra memory on `device` (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return PeakMemory(peak, "cuda max_memory_allocated minus allocated before the call")
    _release_free_heap()
    if _reset_peak_rss():
        before = _status_bytes("VmRSS")
        fn()
        peak = max(0, _status_bytes("VmHWM") - before)
        return PeakMemory(
            peak, "VmHWM (reset via /proc/self/clear_refs, after malloc_trim) minus VmRSS before"
        )
    before = _maxrss_bytes()
    fn()
    return PeakMemory(_maxrss_bytes() - before, "ru_maxrss increase (a lower bound)")
