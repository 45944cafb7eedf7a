"""The dual form with a hand-written backward (`backend="fused"`): the results of the autograd
loop in `dual.py` at a fraction of its memory.

Per chunk (anchor W, rows Q, K, V (b, d), eta (b,), s = 2/b, M strictly lower-triangular):

    U = K W^T,  R = K + LN(U) - V,  G = LN'(U)^T (s R),  A = (Q K^T) * M * eta_col
    P = Q W^T - A G,  Z = Q + LN(P),  W_next = W - (eta G)^T K

Forward walks the chunks once, updating one running weight in place, and keeps (only when a
gradient is needed) the two pre-LayerNorm activations `U` and `P` ((b, d) each) of every chunk
and the (d, d) weight of every `weight_stride`-th chunk. Backward walks the chunks in reverse
carrying `dW` (the gradient of the chunk's end state, accumulated in place): per segment it first
replays the weights in between from the stored one (the inner gradients come from `U` alone, so
the replay is exact), then recomputes LayerNorm statistics, `R`, `G` and `Q K^T` per chunk and
applies the analytic first- and second-order gradients of the inner LayerNorm; nothing is
differentiated by autograd. Precision follows
`dual.py`: `W`-products and `Q K^T` run in the activation dtype in forward; the backward runs in
the state dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .common import (
    check_scan_args,
    chunk_inner_loss,
    fast_weight_product,
    from_chunks,
    inner_ln,
    inner_ln_backward,
    masked_scores,
    no_autocast,
    real_slots,
    residual_from_u,
    state_dtype,
    strictly_lower,
    to_chunks,
)
from .dual import DualResult


def fused_dual_scan(
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
    weight_stride: int | None = None,
) -> DualResult:
    """`autograd_dual_scan`'s arguments and result, computed by `FusedDualScan`.

    Differentiable w.r.t. q, k, v, eta, W, anchor, ln_weight and ln_bias through z, W and anchor.
    weight_stride: forward keeps the weight of every `weight_stride`-th chunk for backward, which
    replays the updates in between (checkpointing through time; results do not depend on it).
    None: ceil(sqrt(n_chunks)), about 2 sqrt(n) weights alive instead of n.
    """
    check_scan_args(q, k, v, eta, W, ln_weight, ln_bias, chunk_size, first_pos)
    if weight_stride is not None and weight_stride < 1:
        raise ValueError(f"weight_stride must be >= 1, got {weight_stride}")
    pad = -(first_pos + q.shape[2]) % chunk_size
    z, W_next, last_anchor, stats = FusedDualScan.apply(
        q, k, v, eta, W, anchor, ln_weight, ln_bias, chunk_size, eps, first_pos, with_inner_loss,
        weight_stride,
    )  # fmt: skip
    return DualResult(
        z, W_next, W_next if pad == 0 else last_anchor, stats if with_inner_loss else None
    )


class _InnerGrad(NamedTuple):
    """A chunk's inner-loss gradient factors at its anchor and the LayerNorm quantities that
    made them, state dtype: g, e = s (K + LN(U) - V), h = ln_w * e, x_hat (BH, b, d); sigma
    (BH, b, 1)."""

    g: Tensor
    e: Tensor
    h: Tensor
    x_hat: Tensor
    sigma: Tensor


def _inner_grad_from_u(
    u: Tensor, k: Tensor, v: Tensor, ln_w: Tensor, ln_b: Tensor, eps: float, scale: float
) -> tuple[_InnerGrad, Tensor]:
    """The chunk's `G` from its pre-LN activations `u = K grad_at^T`, and the residual r."""
    r, x_hat, sigma = residual_from_u(u, k, v, ln_w, ln_b, eps)
    return _inner_grad(x_hat, sigma, r, ln_w, scale), r


def _inner_grad(x_hat: Tensor, sigma: Tensor, r: Tensor, ln_w: Tensor, scale: float) -> _InnerGrad:
    """The inner gradient factors from the residual r and the LN statistics of U."""
    e = scale * r
    g = inner_ln_backward(e, x_hat, sigma, ln_w)
    return _InnerGrad(g, e, ln_w[:, None] * e, x_hat, sigma)


class _Chunk(NamedTuple):
    """One chunk's forward quantities, state dtype: rows (BH, b, d), eta (BH, b), weights
    (BH, d, d). `grad_at` is the weight the inner gradients were taken at (the anchor); `inner`
    the recomputed inner gradient."""

    q: Tensor
    k: Tensor
    eta: Tensor
    W: Tensor
    grad_at: Tensor
    ln_p: tuple[Tensor, Tensor]  # x_hat, sigma of P = Q W^T - A G
    scores: Tensor  # Q K^T (BH, b, b)
    inner: _InnerGrad


class _ChunkGrads(NamedTuple):
    """Gradients of one chunk (LN params per (batch, head) row); d_grad_at w.r.t. the weight its
    inner gradients were taken at, when that is not the weight it read (else it is in dW)."""

    dq: Tensor
    dk: Tensor
    dv: Tensor
    deta: Tensor
    d_ln_w: Tensor
    d_ln_b: Tensor
    d_grad_at: Tensor | None


class _LNStats(NamedTuple):
    """LayerNorm statistics of every chunk: x_hat (BH, n, b, d), sigma (BH, n, b, 1)."""

    x_hat: Tensor
    sigma: Tensor

    @classmethod
    def empty(cls, rows: int, n: int, b: int, d: int, like: Tensor) -> _LNStats:
        return cls(like.new_empty(rows, n, b, d), like.new_empty(rows, n, b, 1))

    def store(self, c: int, x_hat: Tensor, sigma: Tensor) -> None:
        self.x_hat[:, c], self.sigma[:, c] = x_hat, sigma

    def at(self, c: int) -> tuple[Tensor, Tensor]:
        return self.x_hat[:, c], self.sigma[:, c]


def default_weight_stride(n_chunks: int) -> int:
    """Forward stores the weight of every `stride`-th chunk, backward replays the updates in
    between: ceil(sqrt(n)) keeps about 2 sqrt(n) (d, d) weights alive instead of n, for one
    extra (d, b) x (b, d) product per chunk."""
    return max(1, math.ceil(math.sqrt(n_chunks)))


class FusedDualScan(torch.autograd.Function):
    """(q, k, v, eta, W, anchor | None, ln_weight, ln_bias, b, eps, first_pos, with_inner_loss,
    weight_stride | None) -> (z (B, H, T, d), W_next, the weight the last chunk's gradients were taken at, inner-loss
    stats (3,) or an empty tensor).

    Internally batch and heads are one dimension and tokens are (chunk, slot): per-chunk tensors
    are strided views (BH, b, d), weights (BH, d, d), and weight updates single `baddbmm` calls."""

    @staticmethod
    def forward(
        ctx, q, k, v, eta, W, anchor, ln_weight, ln_bias, b, eps, first_pos, with_loss, stride
    ):
        B, H, T, d = q.shape
        n = -(-(first_pos + T) // b)
        pad = n * b - first_pos - T
        sd = state_dtype(W)
        keep = any(ctx.needs_input_grad)  # what backward needs; inference keeps no per-chunk W
        stride = min(stride or default_weight_stride(n), n)
        with no_autocast(q.device):
            qc, kc, vc = (_chunked(x, b, first_pos, n) for x in (q, k, v))
            eta_c = _chunked(eta.to(sd), b, first_pos, n)
            ln_w, ln_b = _per_row(ln_weight.to(sd), B), _per_row(ln_bias.to(sd), B)
            W_c = W.reshape(B * H, d, d).to(sd, copy=True)  # the running weight, updated in place
            W_saved = W_c.new_empty(-(-n // stride), B * H, d, d) if keep else None
            # what backward needs of each chunk: the LayerNorm statistics of U = K W^T and of
            # P = Q W^T - A G (x_hat (b, d) and sigma (b, 1) each), not U and P themselves
            ln_u, ln_p = (_LNStats.empty(B * H, n, b, d, W_c) if keep else None for _ in range(2))
            z = W_c.new_empty(B * H, n, b, d)
            loss = torch.zeros(2, dtype=torch.float32, device=q.device)
            grad_at = W_c if anchor is None else anchor.reshape(B * H, d, d).to(sd)
            for c in range(n):
                q_c, k_c, v_c, eta_cc = qc[:, c], kc[:, c], vc[:, c], eta_c[:, c]
                if keep and c % stride == 0:
                    W_saved[c // stride] = W_c
                u = fast_weight_product(k_c, grad_at)
                inner, r = _inner_grad_from_u(u, k_c, v_c, ln_w, ln_b, eps, 2.0 / b)
                p = fast_weight_product(q_c, W_c) - masked_scores(q_c, k_c, eta_cc) @ inner.g
                ln_of_p, x_hat_p, sigma_p = inner_ln(p, ln_w, ln_b, eps)
                z[:, c] = q_c.to(sd) + ln_of_p
                if keep:
                    ln_u.store(c, inner.x_hat, inner.sigma)
                    ln_p.store(c, x_hat_p, sigma_p)
                if c == n - 1:
                    last_grad_at = grad_at.clone()
                W_c.baddbmm_(_eta_weighted(inner.g, eta_cc), k_c.to(sd), alpha=-1)
                if with_loss:
                    real = real_slots(c, n, b, first_pos, pad)
                    loss += chunk_inner_loss(r, k_c, v_c, W_c, ln_w, ln_b, eps, real)
                grad_at = W_c
            z = _unchunked(z, B, first_pos, T).to(q.dtype)
        if keep:
            ctx.save_for_backward(q, k, v, eta, anchor, ln_weight, ln_bias, W_saved, *ln_u, *ln_p)
            ctx.config = (b, eps, first_pos, stride, W.dtype)
        stats = torch.cat([loss, loss.new_tensor([B * H * T])]) if with_loss else loss.new_empty(0)
        ctx.mark_non_differentiable(stats)
        return z, W_c.reshape(B, H, d, d), last_grad_at.reshape(B, H, d, d), stats

    @staticmethod
    def backward(ctx, dz, dW_end, d_last_anchor, _d_stats):
        q, k, v, eta, anchor, ln_weight, ln_bias, W_saved, *stats = ctx.saved_tensors
        ln_u, ln_p = _LNStats(*stats[:2]), _LNStats(*stats[2:])
        b, eps, first_pos, stride, W_dtype = ctx.config
        B, H, T, d = q.shape
        n, sd = ln_u.x_hat.shape[1], W_saved.dtype
        with no_autocast(q.device):
            qc, kc, vc = (_chunked(x.to(sd), b, first_pos, n) for x in (q, k, v))
            eta_c = _chunked(eta.to(sd), b, first_pos, n)
            dz_c = _chunked(_or_zeros(dz, q).to(sd), b, first_pos, n)
            ln_w, ln_b = _per_row(ln_weight.to(sd), B), _per_row(ln_bias.to(sd), B)
            dq, dk, dv = (torch.empty_like(ln_u.x_hat) for _ in range(3))
            deta = ln_u.x_hat.new_empty(B * H, n, b)
            d_ln_w, d_ln_b = torch.zeros_like(ln_w), torch.zeros_like(ln_b)
            # dW: the gradient of the weight the current chunk ends with, accumulated in place.
            dW = _or_zeros(dW_end, W_saved[0]).reshape(B * H, d, d).to(sd, copy=True)
            anchor_rows = None if anchor is None else anchor.reshape(B * H, d, d).to(sd)
            d_anchor = None
            for start in reversed(range(0, n, stride)):
                chunks = range(start, min(start + stride, n))
                segment = _replay(
                    W_saved[start // stride], chunks, ln_u, kc, vc, eta_c, ln_w, ln_b, 2.0 / b
                )
                for c in reversed(chunks):
                    W_c, inner = segment[c - start]
                    own_anchor = anchor_rows is not None and c == 0
                    grad_at = anchor_rows if own_anchor else W_c
                    q_c, k_c = qc[:, c], kc[:, c]
                    scores = torch.bmm(q_c, k_c.transpose(1, 2))
                    chunk = _Chunk(q_c, k_c, eta_c[:, c], W_c, grad_at, ln_p.at(c), scores, inner)
                    g = _chunk_backward(chunk, dz_c[:, c], dW, ln_w, eps, 2.0 / b, not own_anchor)
                    dq[:, c], dk[:, c], dv[:, c], deta[:, c] = g.dq, g.dk, g.dv, g.deta
                    d_ln_w += g.d_ln_w
                    d_ln_b += g.d_ln_b
                    if own_anchor:
                        d_anchor = g.d_grad_at
                    if c == n - 1 and d_last_anchor is not None:  # the returned anchor's gradient
                        last = d_last_anchor.reshape(B * H, d, d).to(sd)
                        if own_anchor:
                            d_anchor = d_anchor + last
                        else:
                            dW.add_(last)
        dq, dk, dv, deta = (_unchunked(x, B, first_pos, T) for x in (dq, dk, dv, deta))
        return (
            dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), deta.to(eta.dtype),
            dW.reshape(B, H, d, d).to(W_dtype),
            None if d_anchor is None else d_anchor.reshape(B, H, d, d).to(anchor.dtype),
            d_ln_w.view(B, H, d).sum(0).to(ln_weight.dtype),
            d_ln_b.view(B, H, d).sum(0).to(ln_bias.dtype),
            None, None, None, None, None,
        )  # fmt: skip


def _replay(
    W_start: Tensor,
    chunks: range,
    ln_u: _LNStats,
    kc: Tensor,
    vc: Tensor,
    eta_c: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    scale: float,
) -> list[tuple[Tensor, _InnerGrad]]:
    """[(W read by chunk c, its inner gradient) for c in `chunks`], from the stored weight of the
    first: the inner gradients come from the saved `U` (no product with W), each next weight
    from one update, exactly as forward made them."""
    out, W_c = [], W_start
    for c in chunks:
        x_hat, sigma = ln_u.at(c)
        ln_of_u = ln_w[:, None, :] * x_hat + ln_b[:, None, :]  # as `inner_ln` forms it
        inner = _inner_grad(x_hat, sigma, kc[:, c] + ln_of_u - vc[:, c], ln_w, scale)
        out.append((W_c, inner))
        if c != chunks[-1]:
            W_c = _updated(W_c, inner.g, eta_c[:, c], kc[:, c])
    return out


def _updated(W: Tensor, g: Tensor, eta: Tensor, k: Tensor) -> Tensor:
    """`W - (eta g)^T k` in one fused product: W (BH, d, d), g and k (BH, b, d), eta (BH, b)."""
    return torch.baddbmm(W, _eta_weighted(g, eta), k.to(W.dtype), alpha=-1)


def _eta_weighted(g: Tensor, eta: Tensor) -> Tensor:
    """`(eta g)^T` (BH, d, b): the left factor of a weight update."""
    return (g * eta[..., None]).transpose(1, 2)


def _chunked(x: Tensor, chunk_size: int, first_pos: int, n_chunks: int) -> Tensor:
    """(B, H, T[, d]) -> (B * H, n_chunks, chunk_size[, d]), padded as `to_chunks` (a view of x
    when no padding is needed)."""
    if first_pos == 0 and x.shape[2] == n_chunks * chunk_size:
        return x.reshape(-1, n_chunks, chunk_size, *x.shape[3:])
    return to_chunks(x, chunk_size, first_pos, n_chunks).flatten(0, 1)


def _unchunked(x: Tensor, batch: int, first_pos: int, length: int) -> Tensor:
    """Inverse of `_chunked`: (B * H, n, b[, d]) -> (B, H, length[, d]), a view."""
    return from_chunks(x.unflatten(0, (batch, -1)), first_pos, length)


def _per_row(param: Tensor, batch: int) -> Tensor:
    """LN parameter (H, d) -> (B * H, d), matching the flattened (batch, head) dimension."""
    return param.repeat(batch, 1)


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    """An output's incoming gradient, zeros when autograd passes None (the output was unused)."""
    return torch.zeros_like(like) if grad is None else grad


def _chunk_backward(
    x: _Chunk,
    dz: Tensor,
    dW: Tensor,
    ln_w: Tensor,
    eps: float,
    scale: float,
    grad_at_is_W: bool,
) -> _ChunkGrads:
    """Gradients of one chunk given dz (BH, b, d) and dW, the gradient of its end state, which
    becomes in place the gradient of the weight it read (plus of `grad_at` when that is it)."""
    mask = strictly_lower(x.q.shape[-2], x.q.device)
    g, e, h, x_hat, sigma = x.inner
    x_hat_p, sigma_p = x.ln_p
    scores = x.scores
    mask_eta = mask * x.eta[:, None, :]
    # Z = Q + LN(P)
    d_ln_w = (dz * x_hat_p).sum(1)
    d_ln_b = dz.sum(1)
    dP = inner_ln_backward(dz, x_hat_p, sigma_p, ln_w)
    # P = Q W^T - A G with A = (Q K^T) * M * eta_col
    dA = torch.bmm(dP, g.transpose(1, 2)).neg_()
    dS = dA * mask_eta
    deta = (dA * scores * mask).sum(1)
    dq = torch.baddbmm(torch.baddbmm(dz, dP, x.W), dS, x.k)
    # W_next = W - (eta G)^T K
    g_dW = torch.bmm(g, dW)
    eta_col = x.eta[..., None]
    dg = torch.bmm((scores * mask_eta).transpose(1, 2), dP)
    dg = dg.addcmul_(eta_col, torch.bmm(x.k, dW.transpose(1, 2))).neg_()
    deta = deta - (g_dW * x.k).sum(-1)
    # G = LN'(U)^T e, e = s (K + LN(U) - V), differentiated through e, x_hat and sigma
    dh, dx_hat, dsigma = _ln_backward_grads(dg, g, h, x_hat, sigma)
    dr = (scale * ln_w[:, None]) * dh
    d_ln_w += (e * dh + dr * x_hat).sum(1)
    d_ln_b += dr.sum(1)
    dU = _ln_input_grad(dx_hat.addcmul_(ln_w[:, None], dr), dsigma, x_hat, sigma)
    # U = K grad_at^T; dK also collects -eta G dW_next, dS^T Q and dr
    dk = torch.baddbmm(dr.addcmul(eta_col, g_dW, value=-1), dU, x.grad_at)
    dk = torch.baddbmm(dk, dS.transpose(1, 2), x.q)
    # dW_next has been read: it now becomes the gradient of the weight this chunk read (in one
    # product over the stacked rows when the inner gradients were taken at that weight too).
    d_grad_at = None
    if grad_at_is_W:
        dW.baddbmm_(torch.cat([dP, dU], 1).transpose(1, 2), torch.cat([x.q, x.k], 1))
    else:
        dW.baddbmm_(dP.transpose(1, 2), x.q)
        d_grad_at = torch.bmm(dU.transpose(1, 2), x.k)
    return _ChunkGrads(dq, dk, dr.neg_(), deta, d_ln_w, d_ln_b, d_grad_at)


def _ln_backward_grads(
    dg: Tensor, g: Tensor, h: Tensor, x_hat: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of `g = (h - mean(h) - x_hat * mean(h * x_hat)) / sigma` (the LN backward, with
    h = ln_weight * e) w.r.t. h, x_hat and sigma, given dg; means over the last dim."""
    t = dg / sigma
    t_x = (t * x_hat).mean(-1, keepdim=True)
    dh = t - t.mean(-1, keepdim=True) - x_hat * t_x
    dx_hat = -(h * x_hat).mean(-1, keepdim=True) * t - h * t_x
    dsigma = -(g * dg).sum(-1, keepdim=True) / sigma
    return dh, dx_hat, dsigma


def _ln_input_grad(dx_hat: Tensor, dsigma: Tensor, x_hat: Tensor, sigma: Tensor) -> Tensor:
    """du for `x_hat = (u - mean(u)) / sigma`, `sigma = sqrt(var(u) + eps)` given the gradients
    of both (d sigma / d u = x_hat / d)."""
    centered = dx_hat - dx_hat.mean(-1, keepdim=True)
    through_x_hat = (centered - x_hat * (dx_hat * x_hat).mean(-1, keepdim=True)) / sigma
    return through_x_hat + dsigma * x_hat / x_hat.shape[-1]
