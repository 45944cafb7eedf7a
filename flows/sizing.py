"""How many GPUs a model preset needs: a back-of-the-envelope memory model, computed not guessed.

Per GPU, with FSDP full sharding and AdamW in fp32:
  states      = params x (4 fp32 master + 4 grad + 8 Adam m, v) / n_gpus
  activations = layer inputs kept by checkpointing (n_layers x B x T x D x 2 bytes, bf16)
              + one layer recomputed in backward (34 x B x T x D bytes, Korthikanti et al. 2022)
              + TTT fast-weight checkpoints (n_layers x B x H x d x d x 4 bytes per segment of
                chunk_size x checkpoint_n_chunks tokens; one per chunk when checkpointing is off)
The parameter count is exact (`ModelConfig.num_params`); the activation term is an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ttt_core import ModelConfig

GiB = 1 << 30
STATE_BYTES_PER_PARAM = 4 + 4 + 8
RECOMPUTE_BYTES_PER_TOKEN_PER_DIM = 34


@dataclass(frozen=True)
class MemoryEstimate:
    preset: str
    params: int
    n_gpus: int
    batch: int
    seq_len: int
    states_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.states_gib + self.activations_gib


def estimate(preset: str, n_gpus: int, batch: int, seq_len: int) -> MemoryEstimate:
    """Per-GPU memory of training `preset` on `n_gpus` with `batch` rows of `seq_len` per GPU."""
    cfg = ModelConfig.from_preset(preset)
    params = cfg.num_params()
    tokens = batch * seq_len
    kept_inputs = cfg.n_layers * tokens * cfg.d_model * 2
    recompute = RECOMPUTE_BYTES_PER_TOKEN_PER_DIM * tokens * cfg.d_model
    segment = cfg.chunk_size * max(cfg.checkpoint_n_chunks, 1)
    per_state = batch * cfg.n_heads * cfg.head_dim**2 * 4
    ttt_layers = cfg.mixers.count("ttt_linear")
    fast_weights = ttt_layers * per_state * math.ceil(seq_len / segment)
    return MemoryEstimate(
        preset=preset,
        params=params,
        n_gpus=n_gpus,
        batch=batch,
        seq_len=seq_len,
        states_gib=params * STATE_BYTES_PER_PARAM / n_gpus / GiB,
        activations_gib=(kept_inputs + recompute + fast_weights) / GiB,
    )


def min_gpus(
    preset: str, batch: int, seq_len: int, gpu_gib: float = 80.0, usable: float = 0.85
) -> MemoryEstimate:
    """The smallest power-of-two GPU count whose per-GPU estimate fits `usable` x `gpu_gib`."""
    n = 1
    while n <= 4096:
        found = estimate(preset, n, batch, seq_len)
        if found.total_gib <= usable * gpu_gib:
            return found
        n *= 2
    raise ValueError(f"{preset}: does not fit {gpu_gib} GiB GPUs at batch {batch} x {seq_len}")
