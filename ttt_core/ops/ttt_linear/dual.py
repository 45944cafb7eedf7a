"""Dual form of anchored mini-batch GD, differentiated by autograd (`backend="autograd"`): a whole
chunk at once, no per-token `W_t`. The reference loop the fused and Triton backends are tested
against next to the primal reference.

Per chunk with anchor W_c, rows Q, K, G (b x d) and the strictly lower-triangular mask M:
    Wq      = Q W_c^T - (M * (Q K^T) * eta_col) G
    z       = Q + LN(Wq)
    W_{c+1} = W_c - G^T diag(eta) K
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .common import (
    check_scan_args,
    chunk_inner_loss,
    fast_weight_product,
    from_chunks,
    inner_grad,
    inner_ln,
    masked_scores,
    no_autocast,
    outer_update,
    real_slots,
    state_dtype,
    to_chunks,
)


class DualResult(NamedTuple):
    """z (B, H, T, d); W (B, H, d, d) after the last token; anchor: W at the start of the chunk
    holding the last token (equals W when the input ends on a chunk boundary); inner_loss: None or
    a detached fp32 (3,) [sum of ||f(k_s; W_c) - v_s||^2 at each chunk's anchor, the same sum at
    its next anchor, the number of (row, head, token) terms]."""

    z: Tensor
    W: Tensor
    anchor: Tensor
    inner_loss: Tensor | None


def autograd_dual_scan(
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
    """The dual form as a Python loop over chunks; autograd records every intermediate.

    first_pos: position in its chunk of the first token (0 <= first_pos < chunk_size); the chunk's
    earlier slots are padded with eta = 0. anchor: the chunk's anchor W_c when the caller has
    already applied some of its updates (then W = W_c - running sum); gradients of the first chunk
    are taken at it. Defaults to W.
    """
    check_scan_args(q, k, v, eta, W, ln_weight, ln_bias, chunk_size, first_pos)
    B, H, T, _ = q.shape
    b = chunk_size
    n_chunks = -(-(first_pos + T) // b)
    pad = n_chunks * b - first_pos - T
    sd = state_dtype(W)
    with no_autocast(q.device):
        # Padded slots: zero q/k/v and eta = 0, so they move neither W nor any real output.
        q, k, v = (to_chunks(x, b, first_pos, n_chunks) for x in (q, k, v))
        eta = to_chunks(eta.to(sd), b, first_pos, n_chunks)
        # Everything that does not depend on W is computed for all chunks in one batched product.
        attn = masked_scores(q, k, eta)
        ln_w, ln_b = ln_weight.to(sd), ln_bias.to(sd)
        W_c = W.to(sd)
        grad_at = W_c if anchor is None else anchor.to(sd)
        inner_loss = torch.zeros(2, dtype=torch.float32, device=q.device)
        outputs = []
        for c in range(n_chunks):
            q_c, k_c, v_c = q[:, :, c], k[:, :, c], v[:, :, c]
            g, r = inner_grad(k_c, v_c, grad_at, ln_weight, ln_bias, eps, scale=2.0 / b)
            wq = fast_weight_product(q_c, W_c) - attn[:, :, c] @ g
            outputs.append(q_c.to(sd) + inner_ln(wq, ln_w, ln_b, eps)[0])
            W_next = W_c - outer_update(g, eta[:, :, c], k_c)
            if with_inner_loss:
                real = real_slots(c, n_chunks, b, first_pos, pad)
                inner_loss += chunk_inner_loss(r, k_c, v_c, W_next, ln_weight, ln_bias, eps, real)
            last_anchor = grad_at
            W_c = grad_at = W_next
        z = from_chunks(torch.stack(outputs, dim=2), first_pos, T)
    stats = None
    if with_inner_loss:
        stats = torch.cat([inner_loss, inner_loss.new_tensor([B * H * T])])
    return DualResult(z.to(q.dtype), W_c, W_c if pad == 0 else last_anchor, stats)
