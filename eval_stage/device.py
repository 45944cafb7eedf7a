"""Device choice and description, and timing that waits for the device."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from stage_common.allocator import allocator_state

from .errors import EvalInputError
from .results import DeviceInfo

T = TypeVar("T")
K = TypeVar("K")


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when a GPU is visible, else cpu; `cuda` without a GPU is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise EvalInputError(f"device {name!r} is not supported; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalInputError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(name)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def describe_device(device: torch.device) -> DeviceInfo:
    """The device's type and name, torch's intra-op thread count and the C allocator's setting."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return DeviceInfo(
        type=device.type,
        name=name,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        allocator=allocator_state(),
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (cpu for a parameterless module)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], T], device: torch.device, *, repeats: int, warmup: int
) -> tuple[list[float], T]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (the device
    synchronised around each timed call), and the last call's return value."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, out


def time_interleaved(
    fns: dict[K, Callable[[], object]], device: torch.device, *, repeats: int, warmup: int
) -> dict[K, list[float]]:
    """Wall seconds of each of `fns`, timed side by side: `warmup` untimed calls of each, then
    `repeats` rounds in which every function runs once (the device synchronised around each
    call), so load that changes during the run reaches every competitor alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[K, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return times
