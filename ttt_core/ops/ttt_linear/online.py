"""Decode, one token at a time: online GD (each gradient taken at the current `W`, `b = 1`) and
the chunked-GD step (gradients at the chunk's anchor, scale 2/b).

Both run the same per-token step on (batch * heads) rows, in as few kernels as the algebra
allows: the output's and the gradient's products with the fast weight in one batched product
when they read the same weight, both LayerNorms in one native call, and the gradient through
the LayerNorm by the native LayerNorm-backward kernel. Tested against the autograd dual form.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .common import check_inputs, no_autocast, state_dtype


class _RowParams(NamedTuple):
    """The inner LayerNorm's weight and bias per (batch, head) row (BH, 1, d), state dtype, and
    (zeros, ones) (BH, 1, 1) standing in for the mean and rstd of an already-normalised row."""

    w: Tensor
    bias: Tensor
    zeros: Tensor
    ones: Tensor

    @classmethod
    def of(cls, ln_weight: Tensor, ln_bias: Tensor, batch: int, sd: torch.dtype) -> _RowParams:
        w, bias = (p.to(sd).repeat(batch, 1)[:, None, :] for p in (ln_weight, ln_bias))
        zeros = w.new_zeros(w.shape[0], 1, 1)
        return cls(w, bias, zeros, torch.ones_like(zeros))


def _product(x: Tensor, W: Tensor) -> Tensor:
    """`x W^T` for rows x (BH, n, d) in the activation dtype and W (BH, d, d) in the state dtype:
    the product runs in the activation dtype, the result is in W's (as in the dual form)."""
    return torch.bmm(x, W.to(x.dtype).transpose(1, 2)).to(W.dtype)


def _token_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    grad_at: Tensor,
    rows: _RowParams,
    eps: float,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """One token on rows q, k, v (BH, 1, d), eta (BH, 1): z = q + LN(q W^T) reads W; the inner
    gradient g of `scale/2 ||k + LN(k grad_at^T) - v||^2` is taken at grad_at; returns
    (z (BH, 1, d), W - eta g^T k), state dtype."""
    sd, d = W.dtype, W.shape[-1]
    if grad_at is W:
        pre_ln = _product(torch.cat([q, k], 1), W)  # (BH, 2, d): rows q W^T and k W^T
    else:
        pre_ln = torch.cat([_product(q, W), _product(k, grad_at)], 1)
    x_hat, _, rstd = torch.native_layer_norm(pre_ln, [d], None, None, eps)
    z = torch.addcmul(q.to(sd) + rows.bias, rows.w, x_hat[:, :1])
    residual = torch.sub(k.to(sd), v.to(sd)).add_(rows.bias).addcmul_(rows.w, x_hat[:, 1:])
    upstream = residual.mul_(rows.w).mul_(scale)
    mask = [True, False, False]
    g = torch.ops.aten.native_layer_norm_backward(
        upstream, x_hat[:, 1:], [d], rows.zeros, rows.ones, None, None, mask
    )[0].mul_(rstd[:, 1:])
    update_left = g.mul_(eta.to(sd)[..., None]).transpose(1, 2)  # (BH, d, 1): (eta g)^T
    return z, torch.baddbmm(W, update_left, k.to(sd), alpha=-1)


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
    B, H, T, d = q.shape
    sd = state_dtype(W)
    with no_autocast(q.device):
        rows = _RowParams.of(ln_weight, ln_bias, B, sd)
        W_t = W.to(sd).reshape(B * H, d, d)
        qr, kr, vr = (x.reshape(B * H, T, d) for x in (q, k, v))
        eta_r = eta.to(sd).reshape(B * H, T)
        outputs = []
        for t in range(T):
            one = slice(t, t + 1)
            z_t, W_t = _token_step(
                qr[:, one], kr[:, one], vr[:, one], eta_r[:, one], W_t, W_t, rows, eps, 2.0
            )
            outputs.append(z_t)
        z = torch.cat(outputs, dim=1) if outputs else qr.to(sd)
        return z.view(B, H, T, d).to(q.dtype), W_t.view(B, H, d, d)


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
    B, H, _, d = q.shape
    sd = state_dtype(W)
    with no_autocast(q.device):
        rows = _RowParams.of(ln_weight, ln_bias, B, sd)
        q1, k1, v1 = (x.reshape(B * H, 1, d) for x in (q, k, v))
        W_rows = W.to(sd).reshape(B * H, d, d)
        anchor_rows = anchor.to(sd).reshape(B * H, d, d)
        eta1 = eta.to(sd).reshape(B * H, 1)
        z, W_next = _token_step(q1, k1, v1, eta1, W_rows, anchor_rows, rows, eps, 2.0 / chunk_size)
        return z.view(B, H, 1, d).to(q.dtype), W_next.view(B, H, d, d)
