"""Anchored primal reference: sequential, materialises every `W_t`. Slow and obviously correct."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import check_inputs, inner_grad, inner_output, no_autocast, outer_update, state_dtype


def ttt_linear_primal_anchored(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    *,
    chunk_size: int,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Anchored mini-batch GD, token by token.

    Inside chunk c every g_s is taken at the anchor W_c; token t reads
    `W_t = W_c - sum_{s<t in chunk} eta_s g_s k_s^T`. A last, shorter chunk is processed as is
    (no padding), with the same `2 / chunk_size` scale. Returns z (B, H, T, d) in q's dtype and
    W_next (B, H, d, d) in the state dtype.
    """
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    T = q.shape[2]
    with no_autocast(q.device):
        W_t = W.to(state_dtype(W))
        outputs = []
        for start in range(0, T, chunk_size):
            chunk = slice(start, min(start + chunk_size, T))
            g, _ = inner_grad(
                k[:, :, chunk], v[:, :, chunk], W_t, ln_weight, ln_bias, eps, scale=2.0 / chunk_size
            )
            for i, t in enumerate(range(chunk.start, chunk.stop)):
                one = slice(t, t + 1)
                outputs.append(inner_output(q[:, :, one], W_t, ln_weight, ln_bias, eps))
                W_t = W_t - outer_update(g[:, :, i : i + 1], eta[:, :, one], k[:, :, one])
        z = torch.cat(outputs, dim=2) if outputs else q.to(W_t.dtype)
        return z.to(q.dtype), W_t
