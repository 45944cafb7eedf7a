"""Deterministic, rank-partitioned, resumable sample order over a dataset's global indices.

Each epoch `e` has its own permutation of `range(num_samples)` from
`numpy.random.Generator(PCG64(SeedSequence([seed, e])))`. A global step with world size `w` and
per-rank batch size `B` takes the next `w * B` entries of the permutation after `consumed`;
rank `r` gets entries `[consumed + r*B, consumed + (r+1)*B)`. Tail policy: when fewer than
`w * B` entries remain, they are skipped for that epoch and the next epoch starts.

The state is `(epoch, consumed)`, a pure function of the steps taken, so restoring it continues
exactly, also under a different world size or batch size: no sample of the epoch is repeated
or skipped (apart from the tail, which depends on the `w * B` in force at the epoch's end).
"""

from __future__ import annotations

import numpy as np


class SampleOrder:
    """Per-step index batches for each rank. Trainer loop, on every rank::

    idx = order.next_batch_indices(rank, world, batch_size)   # (B,) int64
    ... train on dataset.get_many(idx) ...
    order.advance(world, batch_size)                          # then checkpoint state_dict()
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.consumed = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """(num_samples,) int64 permutation of the given epoch (the current one is cached)."""
        if epoch != self._perm_epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._perm = rng.permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def _check(self, world: int, batch_size: int) -> int:
        step = world * batch_size
        if world < 1 or batch_size < 1:
            raise ValueError(f"world ({world}) and batch_size ({batch_size}) must be positive")
        if step > self.num_samples:
            raise ValueError(
                f"a global step needs world * batch_size = {step} samples, the dataset has "
                f"{self.num_samples}; build more data or lower the batch size"
            )
        return step

    def _position(self, step: int) -> tuple[int, int]:
        """(epoch, consumed) the next step starts from: the next epoch when the tail is too short."""
        if self.num_samples - self.consumed < step:
            return self.epoch + 1, 0
        return self.epoch, self.consumed

    def steps_per_epoch(self, world: int, batch_size: int) -> int:
        """Global steps in a full epoch at this world and batch size."""
        return self.num_samples // self._check(world, batch_size)

    def steps_left_in_epoch(self, world: int, batch_size: int) -> int:
        """Global steps still to take in the current epoch (0: the next step starts a new one)."""
        return (self.num_samples - self.consumed) // self._check(world, batch_size)

    def next_batch_indices(self, rank: int, world: int, batch_size: int) -> np.ndarray:
        """(batch_size,) int64 sample indices of `rank` for the next step; does not advance."""
        step = self._check(world, batch_size)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        epoch, consumed = self._position(step)
        start = consumed + rank * batch_size
        return self.permutation(epoch)[start : start + batch_size].copy()

    def advance(self, world: int, batch_size: int) -> None:
        """Mark one global step of `world * batch_size` samples as consumed."""
        step = self._check(world, batch_size)
        self.epoch, consumed = self._position(step)
        self.consumed = consumed + step

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "epoch": self.epoch,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore `state_dict()`; seed and num_samples must match this order's."""
        for key in ("seed", "num_samples"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"sample order state has {key}={state[key]}, this order has "
                    f"{getattr(self, key)}; resume with the same dataset and seed"
                )
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise ValueError(f"sample order state out of range: epoch={epoch}, consumed={consumed}")
        self.epoch, self.consumed = epoch, consumed
