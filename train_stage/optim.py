"""AdamW with weight-decay groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

NO_DECAY_SUFFIXES = ("W0", "ln_weight", "ln_bias", "bias")
FSDP_PREFIX = "_fsdp_wrapped_module."


def decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that decay: matrices, but not norms, biases, the inner LN or the
    initial fast weight W0. Call it on the unwrapped model: FSDP flattens parameters."""
    return {
        name
        for name, param in model.named_parameters()
        if param.dim() >= 2 and "norm" not in name and not name.endswith(NO_DECAY_SUFFIXES)
    }


def build_optimizer(model: nn.Module, decaying: set[str], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model` (wrapped or not) with `decaying` (from `decay_names`) in group 0."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if name.replace(FSDP_PREFIX, "") in decaying else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step`: linear warmup, then cosine decay to
    `min_lr_ratio` of the stage's peak over the whole run (each curriculum stage has its peak)."""
    peak = cfg.stage_lr(cfg.stage_at(step)[1]) / cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
