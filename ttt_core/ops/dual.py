"""Dual form of anchored mini-batch GD: a whole chunk at once, no per-token `W_t`.

Per chunk with anchor W_c, rows Q, K, G (b x d) and the strictly lower-triangular mask M:
    Wq      = Q W_c^T - (M * (Q K^T) * eta_col) G
    z       = Q + LN(Wq)
    W_{c+1} = W_c - G^T diag(eta) K
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import (
    check_inputs,
    inner_grad,
    inner_ln,
    inner_residual,
    no_autocast,
    outer_update,
    state_dtype,
)


def ttt_linear_dual(
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
    """Training / prefill path. Any T: padded internally with `eta = 0` and trimmed.

    Returns z (B, H, T, d) in q's dtype and W_next (B, H, d, d) in the state dtype.
    """
    result = dual_scan(q, k, v, eta, W, ln_weight, ln_bias, chunk_size=chunk_size, eps=eps)
    return result.z, result.W


class DualResult(NamedTuple):
    """z (B, H, T, d); W (B, H, d, d) after the last token; anchor: W at the start of the chunk
    holding the last token (equals W when the input ends on a chunk boundary); inner_loss: None or
    a detached fp32 (3,) [sum of ||f(k_s; W_c) - v_s||^2 at each chunk's anchor, the same sum at
    its next anchor, the number of (row, head, token) terms]."""

    z: Tensor
    W: Tensor
    anchor: Tensor
    inner_loss: Tensor | None


def dual_scan(
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
    first_pos: int = 0,
    anchor: Tensor | None = None,
    with_inner_loss: bool = False,
) -> DualResult:
    """`ttt_linear_dual`, able to start inside a chunk.

    first_pos: position in its chunk of the first token (0 <= first_pos < chunk_size); the chunk's
    earlier slots are padded with eta = 0. anchor: the chunk's anchor W_c when the caller has
    already applied some of its updates (then W = W_c - running sum); gradients of the first chunk
    are taken at it. Defaults to W.
    """
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= first_pos < chunk_size:
        raise ValueError(f"first_pos must be in [0, {chunk_size}), got {first_pos}")
    B, H, T, d = q.shape
    b = chunk_size
    n_chunks = -(-(first_pos + T) // b)
    pad = n_chunks * b - first_pos - T
    sd = state_dtype(W)
    with no_autocast(q.device):
        # Padded slots: zero q/k/v and eta = 0, so they move neither W nor any real output.
        q, k, v = (F.pad(x, (0, 0, first_pos, pad)).view(B, H, n_chunks, b, d) for x in (q, k, v))
        eta = F.pad(eta, (first_pos, pad)).view(B, H, n_chunks, b).to(sd)
        # Everything that does not depend on W is computed for all chunks in one batched product.
        strict_lower = torch.ones(b, b, dtype=torch.bool, device=q.device).tril(-1)
        attn = (q @ k.transpose(-1, -2)).to(sd) * strict_lower * eta[..., None, :]
        ln_w, ln_b = ln_weight.to(sd), ln_bias.to(sd)
        W_c = W.to(sd)
        grad_at = W_c if anchor is None else anchor.to(sd)
        inner_loss = torch.zeros(2, dtype=torch.float32, device=q.device)
        outputs = []
        for c in range(n_chunks):
            q_c, k_c, v_c = q[:, :, c], k[:, :, c], v[:, :, c]
            g, r = inner_grad(k_c, v_c, grad_at, ln_weight, ln_bias, eps, scale=2.0 / b)
            wq = (q_c @ W_c.to(q.dtype).transpose(-1, -2)).to(sd) - attn[:, :, c] @ g
            outputs.append(q_c.to(sd) + inner_ln(wq, ln_w, ln_b, eps)[0])
            W_next = W_c - outer_update(g, eta[:, :, c], k_c)
            if with_inner_loss:
                real = slice(first_pos if c == 0 else 0, b - pad if c == n_chunks - 1 else b)
                inner_loss += _chunk_inner_loss(r, k_c, v_c, W_next, ln_weight, ln_bias, eps, real)
            last_anchor = grad_at
            W_c = grad_at = W_next
        z = torch.cat(outputs, dim=2)[:, :, first_pos : first_pos + T]
    stats = None
    if with_inner_loss:
        stats = torch.cat([inner_loss, inner_loss.new_tensor([B * H * T])])
    return DualResult(z.to(q.dtype), W_c, W_c if pad == 0 else last_anchor, stats)


@torch.no_grad()
def _chunk_inner_loss(
    r_anchor: Tensor,
    k: Tensor,
    v: Tensor,
    W_next: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    eps: float,
    real: slice,
) -> Tensor:
    """[sum ||r||^2 at the anchor, sum ||r||^2 at W_next] over the chunk's real (unpadded) slots."""
    r_after = inner_residual(k, v, W_next, ln_weight, ln_bias, eps)[0]
    before = r_anchor[:, :, real].float().pow(2).sum()
    after = r_after[:, :, real].float().pow(2).sum()
    return torch.stack([before, after])
