"""Online GD (decode): one token at a time, each gradient taken at the current `W`, `b = 1`."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import check_inputs, inner_grad, inner_output, no_autocast, outer_update, state_dtype


def ttt_linear_online(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    *,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """For each t: `z_t = q_t + LN(W q_t)` with the current W, then `W <- W - eta_t g_t k_t^T`.

    Returns z (B, H, T, d) in q's dtype and W_next (B, H, d, d) in the state dtype.
    """
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    with no_autocast(q.device):
        W_t = W.to(state_dtype(W))
        outputs = []
        for t in range(q.shape[2]):
            one = slice(t, t + 1)
            outputs.append(inner_output(q[:, :, one], W_t, ln_weight, ln_bias, eps))
            g, _ = inner_grad(k[:, :, one], v[:, :, one], W_t, ln_weight, ln_bias, eps, scale=2.0)
            W_t = W_t - outer_update(g, eta[:, :, one], k[:, :, one])
        z = torch.cat(outputs, dim=2) if outputs else q.to(W_t.dtype)
        return z.to(q.dtype), W_t


def ttt_linear_chunked_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    anchor: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    *,
    chunk_size: int,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """One token of `decode_mode="chunked"`: reproduces the dual form token by token.

    q, k, v: (B, H, 1, d); eta: (B, H, 1); W = anchor - (updates of the chunk so far).
    The output reads W; the gradient is taken at the chunk's anchor with the chunk's 2/b scale.
    Committing the anchor at a chunk boundary is the caller's job (it knows each row's position).
    """
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    with no_autocast(q.device):
        W = W.to(state_dtype(W))
        z = inner_output(q, W, ln_weight, ln_bias, eps)
        g, _ = inner_grad(k, v, anchor.to(W.dtype), ln_weight, ln_bias, eps, scale=2.0 / chunk_size)
        return z.to(q.dtype), W - outer_update(g, eta, k)
