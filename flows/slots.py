"""The `train-slots` global concurrency limit: one slot per accelerator, held by the training
stage while torchrun runs, so bring-ups started together queue for the machine instead of
oversubscribing it."""

from __future__ import annotations

from contextlib import AbstractContextManager

TRAIN_SLOTS = "train-slots"
LEASE_S = 60.0  # the least the server accepts


def default_train_slots() -> int:
    """The visible GPUs, or 1 on a machine without one."""
    import torch

    return max(torch.cuda.device_count(), 1)


def train_slot() -> AbstractContextManager:
    """Hold one `train-slots` slot. Where the limit does not exist (`flows run`'s temporary
    server, which nothing else shares) Prefect skips the acquisition. The slot is a lease
    renewed while it is held: a process killed while holding it frees it within
    `LEASE_S`, so the restart of a crashed bring-up is not kept waiting."""
    from prefect.concurrency.sync import concurrency

    return concurrency(TRAIN_SLOTS, occupy=1, strict=False, lease_duration=LEASE_S)
