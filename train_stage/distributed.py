"""Process-group setup and model wrapping: everything distributed lives here.

Run directly (one process) or under `torchrun`, which sets RANK / WORLD_SIZE / LOCAL_RANK.
CPU uses gloo, CUDA uses nccl. `fsdp` is classic `FullyShardedDataParallel` with a 1-D device
mesh, `use_orig_params=True` and one FSDP unit per transformer block.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ttt_core.e2e import E2ESuffix
from ttt_core.model import Block


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def world_from_env() -> tuple[int, int, int]:
    """(rank, world, local_rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device_request: str) -> DistEnv:
    rank, world, local_rank = world_from_env()
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)


def shutdown_distributed(clean: bool) -> None:
    """Leave the process group; `clean` waits for the other ranks first (skip it after a
    failure, when they may never arrive)."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, env: DistEnv) -> nn.Module:
    """`none`: the module as is (one process). `fsdp`: classic FSDP, sharded across the world."""
    if strategy == "none":
        return model.to(env.device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    mesh = init_device_mesh(env.device.type, (env.world,))
    return FSDP(
        model.to(env.device) if env.device.type == "cuda" else model,
        device_mesh=mesh,
        use_orig_params=True,
        # the TTT-E2E suffix is one unit: its inner gradients are taken inside its forward
        auto_wrap_policy=ModuleWrapPolicy({Block, E2ESuffix}),
        device_id=env.device,
    )


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Total gradient norm before clipping; clips when max_norm > 0 (FSDP's own under FSDP)."""
    limit = max_norm if max_norm > 0 else float("inf")
    if hasattr(model, "clip_grad_norm_"):
        return model.clip_grad_norm_(limit)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), limit)


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world
    return value


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
