"""Training data: the shard datasets, the resumable sample order, and batches as tensors."""

from __future__ import annotations

import numpy as np
import torch

from data_stage import SampleOrder, ShardDataset

from .config import TrainConfig
from .distributed import DistEnv


class TrainData:
    """Train/val rows of a shard directory. Rows hold `shard_seq_len + 1` ids and are cropped
    to the step's `seq_len + 1`, so shorter curriculum stages reuse the same shards."""

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.env = env
        self.train = ShardDataset(cfg.data, "train")
        self.val = ShardDataset(cfg.data, "val")
        self.order = SampleOrder(len(self.train), seed=cfg.seed)

    def next_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next (inputs, labels), each (batch_size, seq_len) int64; advances the
        order by one global micro-step."""
        idx = self.order.next_batch_indices(self.env.rank, self.env.world, batch_size)
        self.order.advance(self.env.world, batch_size)
        return self._tensors(self.train.get_many(idx), seq_len)

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int):
        """The first n_batches * batch_size validation rows, in order: the same on every rank
        and at every evaluation, so validation losses are comparable across steps and runs."""
        rows = min(len(self.val), n_batches * batch_size)
        for start in range(0, rows, batch_size):
            idx = np.arange(start, min(start + batch_size, rows))
            yield self._tensors(self.val.get_many(idx), seq_len)

    def _tensors(self, rows: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(rows[:, : seq_len + 1].astype(np.int64)).to(self.env.device)
        return ids[:, :-1], ids[:, 1:]
