"""The dual form with a hand-written backward (`backend="fused"`): the results of the autograd
loop in `dual.py` at a fraction of its memory and time.

Per chunk (anchor W, rows Q, K, V (b, d), eta (b,), s = 2/b, M strictly lower-triangular, the
inner LayerNorm LN(u) = w * x_hat(u) + beta with x_hat = (u - mean u) * rstd):

    U = K W^T,  R = K + LN(U) - V,  G = LN'(U)^T (s R),  A = (Q K^T) * M * eta_col
    P = Q W^T - A G,  Z = Q + LN(P),  W_next = W - G^T (eta K)

Q K^T and A, which do not depend on W, are formed for all chunks at once before the loop; the
loop does the other four products per chunk and the LayerNorm work in as few passes as the
algebra allows (U's statistics in four elementwise passes, x_hat's vector-Jacobian product by
the native LayerNorm-backward kernel); P's LayerNorm and Z are formed for all chunks after it.
On CPU a fresh (B, H, T, d)-sized temporary costs more in memory traffic than batching K - V or
eta K over the chunks saves, so those are formed per chunk. Forward keeps, only when a gradient
is needed, in chunk-major (n, BH, ...) buffers: U's x_hat and rstd, the inner gradient g and
h = s w r that made it, P's x_hat and rstd, and the (d, d) weight of every `weight_stride`-th
chunk. Backward walks the chunks in reverse carrying `dW` (the gradient of the chunk's end state,
accumulated in place): per segment it first replays the weights in between from the stored one
with the kept g (bitwise forward's), then applies the analytic first- and second-order gradients
of the inner LayerNorm per chunk, while the chunk's rows are in cache; the terms through A and
the LayerNorm bias's sums are formed for all chunks at once after the loop; nothing is
differentiated by autograd. Precision follows `dual.py`: `W`-products and `Q K^T` run in the
activation dtype in forward; the backward runs in the state dtype.
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
    no_autocast,
    real_slots,
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


def default_weight_stride(n_chunks: int) -> int:
    """Forward stores the weight of every `stride`-th chunk, backward replays the updates in
    between: ceil(sqrt(n)) keeps about 2 sqrt(n) (d, d) weights alive instead of n, for one
    extra (d, b) x (b, d) product per chunk. (Keeping all n was no faster on CPU: the weights
    are read back cold, and above glibc's mmap threshold each call page-faults them in.)"""
    return max(1, math.ceil(math.sqrt(n_chunks)))


class _Layout(NamedTuple):
    """One scan's inputs by chunk and what does not depend on W: k, v (BH, n, b, d), eta
    (BH, n, b); per-(batch, head) LayerNorm weight `w`, bias, `s w`, `s w bias` and `s w w`
    (BH, 1, d) with s = 2 / b the inner loss's `scale`; scores Q K^T, mask_eta = M * eta_col and
    A = scores * mask_eta (BH, n, b, b), state dtype."""

    scale: float
    kc: Tensor
    vc: Tensor
    eta_c: Tensor
    w: Tensor
    bias: Tensor
    sw: Tensor
    sw_bias: Tensor
    sww: Tensor
    scores: Tensor
    mask_eta: Tensor
    A: Tensor

    @classmethod
    def of(cls, qc, kc, vc, eta_c, ln_weight, ln_bias, batch, sd) -> _Layout:
        """qc, kc, vc (BH, n, b, d) in the activation dtype, eta_c (BH, n, b) in `sd`."""
        b = qc.shape[2]
        w, bias = (p.to(sd).repeat(batch, 1)[:, None, :] for p in (ln_weight, ln_bias))
        rows, n, _, d = qc.shape
        flat_q, flat_k = qc.reshape(-1, b, d), kc.reshape(-1, b, d)
        scores = torch.bmm(flat_q, flat_k.transpose(1, 2)).to(sd).view(rows, n, b, b)
        mask_eta = strictly_lower(b, qc.device) * eta_c[:, :, None, :]
        scale = 2.0 / b
        sw = scale * w
        return cls(scale, kc, vc, eta_c, w, bias, sw, sw * bias, sw * w, scores, mask_eta,
                   scores * mask_eta)  # fmt: skip


class _Saved(NamedTuple):
    """What forward keeps for backward, chunk-major so one chunk's rows are contiguous, state
    dtype: of U = K W^T its x_hat (n, BH, b, d) and rstd (n, BH, b, 1), the inner gradient g and
    h = s w (K - V + bias + w x_hat) that made it (n, BH, b, d); of P = Q W^T - A G its x_hat and
    rstd."""

    x_hat_u: Tensor
    rstd_u: Tensor
    g: Tensor
    h: Tensor
    x_hat_p: Tensor
    rstd_p: Tensor

    @classmethod
    def empty(cls, n: int, rows: int, b: int, d: int, like: Tensor) -> _Saved:
        """Buffers for every field but the P ones, which forward normalises in place."""
        return cls(*(like.new_empty(n, rows, b, size) for size in (d, 1, d, d)), None, None)


def _normalise(
    u: Tensor, eps: float, x_hat: Tensor | None = None, rstd: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(x_hat, rstd) of u (..., d) over its last dim (biased variance): x_hat written into the
    given buffer, else into u itself (a temporary: u is always overwritten), rstd (..., 1) into
    its buffer if given. Centred two-pass statistics; four elementwise passes, faster on CPU
    than `native_layer_norm` at these shapes."""
    d = u.shape[-1]
    centred = u.sub_(u.mean(-1, keepdim=True))
    inv = torch.linalg.vecdot(centred, centred)[..., None].div_(d).add_(eps).rsqrt_()
    if rstd is not None:
        inv = rstd.copy_(inv)
    return torch.mul(centred, inv, out=centred if x_hat is None else x_hat), inv


def _ln_vjp(
    dy: Tensor, x_hat: Tensor, rstd: Tensor, unit: tuple[Tensor, Tensor], out: Tensor | None = None
) -> Tensor:
    """`rstd * (dy - mean(dy) - x_hat * mean(dy * x_hat))`: the vector-Jacobian product of
    `x_hat(u)` (a symmetric operator), over the last dim of (..., b, d), into `out` if given.
    `unit` is (zeros, ones) shaped like rstd, so the fused native kernel normalises nothing
    again."""
    zeros, ones = unit
    mask = [True, False, False]
    vjp = torch.ops.aten.native_layer_norm_backward(
        dy, x_hat, [dy.shape[-1]], zeros, ones, None, None, mask
    )
    return torch.mul(vjp[0], rstd, out=vjp[0] if out is None else out)


def _unit(like: Tensor) -> tuple[Tensor, Tensor]:
    """(zeros, ones) shaped like an rstd (..., b, 1): `_ln_vjp`'s mean and rstd."""
    return torch.zeros_like(like), torch.ones_like(like)


def _inner_h(lay: _Layout, c: int, x_hat: Tensor, out: Tensor | None = None) -> Tensor:
    """h = s w (K - V + bias + w x_hat) of chunk c (BH, b, d), state dtype, into `out` if given:
    the inner loss's gradient w.r.t. LN(U), whose x_hat-VJP is the inner gradient g."""
    sd = x_hat.dtype
    kv = torch.sub(lay.kc[:, c].to(sd), lay.vc[:, c].to(sd))
    return torch.addcmul(lay.sw_bias, kv, lay.sw, out=out).addcmul_(lay.sww, x_hat)


def _residual(lay: _Layout, c: int, x_hat: Tensor) -> Tensor:
    """r = K + LN(U) - V of chunk c (BH, b, d), for the inner-loss statistics only."""
    sd = x_hat.dtype
    r = torch.sub(lay.kc[:, c].to(sd), lay.vc[:, c].to(sd)).add_(lay.bias)
    return r.addcmul_(lay.w, x_hat)


def _product_into(x: Tensor, W: Tensor, out: Tensor) -> Tensor:
    """`fast_weight_product(x, W)` (BH, b, d) written into `out` (state dtype)."""
    if x.dtype == out.dtype:
        return torch.bmm(x, W.transpose(1, 2), out=out)
    return out.copy_(fast_weight_product(x, W))


def _update(lay: _Layout, c: int, W: Tensor, g: Tensor, out: Tensor) -> Tensor:
    """`W - g^T (eta K)` (BH, d, d) for chunk c in one fused product, written into `out` (W
    itself for an update in place)."""
    keta = lay.kc[:, c].to(W.dtype) * lay.eta_c[:, c, :, None]
    return torch.baddbmm(W, g.transpose(1, 2), keta, alpha=-1, out=out)


class FusedDualScan(torch.autograd.Function):
    """(q, k, v, eta, W, anchor | None, ln_weight, ln_bias, b, eps, first_pos, with_inner_loss,
    weight_stride | None) -> (z (B, H, T, d), W_next, the weight the last chunk's gradients
    were taken at, inner-loss stats (3,) or an empty tensor).

    Internally batch and heads are one dimension and tokens are (chunk, slot): input chunks are
    strided views (BH, b, d), weights (BH, d, d), weight updates single `baddbmm` calls, and
    what is kept per chunk lives in chunk-major (n, BH, ...) buffers."""

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
            lay = _Layout.of(qc, kc, vc, eta_c, ln_weight, ln_bias, B, sd)
            W_c = W.reshape(B * H, d, d).to(sd, copy=True)  # the running weight, updated in place
            W_saved = W_c.new_empty(-(-n // stride), B * H, d, d) if keep else None
            saved = _Saved.empty(n, B * H, b, d, W_c) if keep else None
            P = W_c.new_empty(n, B * H, b, d)  # Q W^T - A G per chunk, normalised after the loop
            unit = _unit(W_c.new_empty(B * H, b, 1))
            loss = torch.zeros(2, dtype=torch.float32, device=q.device)
            grad_at = W_c if anchor is None else anchor.reshape(B * H, d, d).to(sd)
            for c in range(n):
                if keep and c % stride == 0:
                    W_saved[c // stride] = W_c
                u = fast_weight_product(kc[:, c], grad_at)
                kept = (saved.x_hat_u[c], saved.rstd_u[c]) if keep else ()
                x_hat, rstd = _normalise(u, eps, *kept)
                h = _inner_h(lay, c, x_hat, out=saved.h[c] if keep else None)
                g = _ln_vjp(h, x_hat, rstd, unit, out=saved.g[c] if keep else None)
                _product_into(qc[:, c], W_c, P[c]).baddbmm_(lay.A[:, c], g, alpha=-1)
                if c == n - 1:
                    last_grad_at = grad_at.clone()
                _update(lay, c, W_c, g, out=W_c)
                if with_loss:
                    real = real_slots(c, n, b, first_pos, pad)
                    ln_w, ln_b = lay.w[:, 0], lay.bias[:, 0]
                    r = _residual(lay, c, x_hat)
                    loss += chunk_inner_loss(r, kc[:, c], vc[:, c], W_c, ln_w, ln_b, eps, real)
                grad_at = W_c
            x_hat_p, rstd_p = _normalise(P, eps)  # P's LayerNorm for all chunks at once
            z = (qc.to(sd) + lay.bias[:, None]).addcmul_(lay.w[:, None], x_hat_p.transpose(0, 1))
            z = _unchunked(z, B, first_pos, T).to(q.dtype)
        if keep:
            saved = saved._replace(x_hat_p=x_hat_p, rstd_p=rstd_p)
            ctx.save_for_backward(q, k, v, eta, anchor, ln_weight, ln_bias, W_saved, *saved)
            ctx.config = (b, first_pos, stride, W.dtype)
        stats = torch.cat([loss, loss.new_tensor([B * H * T])]) if with_loss else loss.new_empty(0)
        ctx.mark_non_differentiable(stats)
        return z, W_c.reshape(B, H, d, d), last_grad_at.reshape(B, H, d, d), stats

    @staticmethod
    def backward(ctx, dz, dW_end, d_last_anchor, _d_stats):
        q, k, v, eta, anchor, ln_weight, ln_bias, W_saved, *kept = ctx.saved_tensors
        saved = _Saved(*kept)
        b, first_pos, stride, W_dtype = ctx.config
        B, H, T, d = q.shape
        n, sd = saved.g.shape[0], W_saved.dtype
        with no_autocast(q.device):
            qc, kc, vc = (_chunked(x.to(sd), b, first_pos, n) for x in (q, k, v))
            eta_c = _chunked(eta.to(sd), b, first_pos, n)
            dz_c = _chunked(_or_zeros(dz, q).to(sd), b, first_pos, n)
            lay = _Layout.of(qc, kc, vc, eta_c, ln_weight, ln_bias, B, sd)
            grads = _Grads.empty(B * H, n, b, d, W_saved)
            unit = _unit(saved.rstd_u[0])
            # dW: the gradient of the weight the current chunk ends with, accumulated in place.
            dW = _or_zeros(dW_end, W_saved[0]).reshape(B * H, d, d).to(sd, copy=True)
            anchor_rows = None if anchor is None else anchor.reshape(B * H, d, d).to(sd)
            d_anchor = None
            replayed = W_saved.new_empty(stride - 1, B * H, d, d)
            for start in reversed(range(0, n, stride)):
                chunks = range(start, min(start + stride, n))
                weights = _replay(W_saved[start // stride], chunks, saved.g, lay, replayed)
                for c in reversed(chunks):
                    own_anchor = anchor_rows is not None and c == 0
                    W_c = weights[c - start]
                    grad_at = anchor_rows if own_anchor else W_c
                    rows = _Rows(
                        qc[:, c], kc[:, c], vc[:, c], dz_c[:, c], eta_c[:, c, :, None], W_c, grad_at
                    )
                    d_grad_at = _chunk_backward(c, rows, saved, dW, grads, lay, unit, own_anchor)
                    if own_anchor:
                        d_anchor = d_grad_at
                    if c == n - 1 and d_last_anchor is not None:  # the returned anchor's gradient
                        last = d_last_anchor.reshape(B * H, d, d).to(sd)
                        if own_anchor:
                            d_anchor = d_anchor + last
                        else:
                            dW.add_(last)
            dq, dk, dv, deta, d_ln_w, d_ln_b = grads.finish(qc, kc, dz_c, lay)
        dq, dk, dv, deta = (_unchunked(x, B, first_pos, T) for x in (dq, dk, dv, deta))
        return (
            dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), deta.to(eta.dtype),
            dW.reshape(B, H, d, d).to(W_dtype),
            None if d_anchor is None else d_anchor.reshape(B, H, d, d).to(anchor.dtype),
            d_ln_w.view(B, H, d).sum(0).to(ln_weight.dtype),
            d_ln_b.view(B, H, d).sum(0).to(ln_bias.dtype),
            None, None, None, None, None,
        )  # fmt: skip


class _Rows(NamedTuple):
    """One chunk's inputs in backward, state dtype: q, k, v, dz (BH, b, d), eta (BH, b, 1); the
    weight it read and the one its inner gradients were taken at (BH, d, d)."""

    q: Tensor
    k: Tensor
    v: Tensor
    dz: Tensor
    eta: Tensor
    W: Tensor
    grad_at: Tensor


class _Grads(NamedTuple):
    """What the reverse loop fills per chunk, state dtype: dq and dk without their terms through
    A, dv (BH, n, b, d); dA (BH, n, b, b); deta_update (BH, n, b), the W-update term of d eta;
    ln_w_terms (BH, b, d), the summands of the LayerNorm weight's gradient, accumulated over the
    chunks (summed over the rows once, at the end)."""

    dq: Tensor
    dk: Tensor
    dv: Tensor
    dA: Tensor
    deta_update: Tensor
    ln_w_terms: Tensor

    @classmethod
    def empty(cls, rows: int, n: int, b: int, d: int, like: Tensor) -> _Grads:
        full = [like.new_empty(rows, n, b, d) for _ in range(3)]
        return cls(*full, like.new_empty(rows, n, b, b), like.new_empty(rows, n, b),
                   like.new_zeros(rows, b, d))  # fmt: skip

    def finish(self, qc: Tensor, kc: Tensor, dz_c: Tensor, lay: _Layout):
        """(dq, dk, dv, deta (BH, n, b[, d]), d_ln_w, d_ln_b (BH, d)), adding the terms of every
        chunk at once: through A = (Q K^T) * M * eta_col (batched products over all chunks), and
        the LayerNorm bias's (Z's, and the bias in K - V + bias, whose gradient is -dv)."""
        b, d = self.dq.shape[-2:]
        dS = self.dA * lay.mask_eta
        self.dq.view(-1, b, d).baddbmm_(dS.view(-1, b, b), kc.reshape(-1, b, d))
        dS_t = dS.transpose(-1, -2).reshape(-1, b, b)
        self.dk.view(-1, b, d).baddbmm_(dS_t, qc.reshape(-1, b, d))
        mask = strictly_lower(b, qc.device)
        deta = (self.dA * lay.scores * mask).sum(-2).sub_(self.deta_update)
        d_ln_b = dz_c.sum((1, 2)).sub_(self.dv.sum((1, 2)))
        return self.dq, self.dk, self.dv, deta, self.ln_w_terms.sum(1), d_ln_b


def _chunk_backward(
    c: int, x: _Rows, saved: _Saved, dW: Tensor, grads: _Grads, lay: _Layout,
    unit: tuple[Tensor, Tensor], own_anchor: bool,
) -> Tensor | None:  # fmt: skip
    """Chunk c's gradients into `grads`, given dz and dW, the gradient of its end state, which
    becomes in place the gradient of the weight it read (plus of `grad_at` when that is it).
    Returns the gradient of `grad_at` when it is the caller's anchor, else None. Names with an
    `n_` prefix hold the negated gradient (fewer passes: every use of dG is linear). Everything
    a chunk touches is formed here while it is in cache: on CPU the same work batched over all
    chunks after the loop is slower (each pass then streams the whole (BH, n, b, d) from memory)."""
    x_hat, rstd, g, h = saved.x_hat_u[c], saved.rstd_u[c], saved.g[c], saved.h[c]
    rstd_d = rstd / x_hat.shape[-1]
    # Z = Q + w x_hat(P) + bias (the bias's share is summed later)
    grads.ln_w_terms.addcmul_(x.dz, saved.x_hat_p[c])
    dP = _ln_vjp(x.dz * lay.w, saved.x_hat_p[c], saved.rstd_p[c], unit)
    # P = Q W^T - A G
    grads.dA[:, c] = torch.bmm(dP, g.transpose(1, 2)).neg_()
    grads.dq[:, c] = torch.baddbmm(x.dz, dP, x.W)
    # W_next = W - G^T (eta K)
    g_dW = torch.bmm(g, dW)
    grads.deta_update[:, c] = torch.linalg.vecdot(g_dW, x.k)
    n_dg = torch.bmm(x.k, dW.transpose(1, 2)).mul_(x.eta)
    n_dg.baddbmm_(lay.A[:, c].transpose(1, 2), dP)
    # G = x_hat'(U)^T h with h = s w (K - V + bias + w x_hat), through h, x_hat and rstd of U
    h_x = torch.linalg.vecdot(h, x_hat)[..., None].mul_(rstd_d)
    n_dg_x = torch.linalg.vecdot(n_dg, x_hat)[..., None].mul_(rstd_d)
    n_rstd_term = torch.linalg.vecdot(n_dg, g)[..., None].mul_(rstd_d)
    n_dh = _ln_vjp(n_dg, x_hat, rstd, unit)
    dx_hat = torch.addcmul(h * n_dg_x, n_dg, h_x).addcmul_(lay.sww, n_dh, value=-1)
    n_dr = lay.sw * n_dh
    # h's LayerNorm weight, in s w (K - V + bias) and in s w w x_hat (the bias's share is -dv)
    r_w = torch.sub(x.k, x.v).add_(lay.bias).addcmul_(lay.w, x_hat, value=2)
    grads.ln_w_terms.addcmul_(r_w, n_dh, value=-lay.scale)
    dU = _ln_vjp(dx_hat, x_hat, rstd, unit).addcmul_(x_hat, n_rstd_term)
    # U = K grad_at^T; dK also collects -eta G dW_next (and dS^T Q, added later)
    grads.dk[:, c] = torch.baddbmm(n_dr.addcmul(x.eta, g_dW), dU, x.grad_at, beta=-1)
    grads.dv[:, c] = n_dr
    # dW_next has been read: it now becomes the gradient of the weight this chunk read.
    dW.baddbmm_(dP.transpose(1, 2), x.q)
    if own_anchor:
        return torch.bmm(dU.transpose(1, 2), x.k)
    dW.baddbmm_(dU.transpose(1, 2), x.k)
    return None


def _replay(
    W_start: Tensor, chunks: range, g: Tensor, lay: _Layout, buffer: Tensor
) -> list[Tensor]:
    """[the weight chunk c read for c in `chunks`], from the stored weight of the first, each
    next one by the update forward made from the kept inner gradient g (n, BH, b, d): bitwise
    forward's weights, written into `buffer` (stride - 1, BH, d, d), reused by every segment."""
    out, W_c = [], W_start
    for i, c in enumerate(chunks):
        out.append(W_c)
        if c != chunks[-1]:
            W_c = _update(lay, c, W_c, g[c], out=buffer[i])
    return out


def _chunked(x: Tensor, chunk_size: int, first_pos: int, n_chunks: int) -> Tensor:
    """(B, H, T[, d]) -> (B * H, n_chunks, chunk_size[, d]), padded as `to_chunks` (a view of x
    when no padding is needed)."""
    if first_pos == 0 and x.shape[2] == n_chunks * chunk_size:
        return x.reshape(-1, n_chunks, chunk_size, *x.shape[3:])
    return to_chunks(x, chunk_size, first_pos, n_chunks).flatten(0, 1)


def _unchunked(x: Tensor, batch: int, first_pos: int, length: int) -> Tensor:
    """Inverse of `_chunked`: (B * H, n, b[, d]) -> (B, H, length[, d]), a view."""
    return from_chunks(x.unflatten(0, (batch, -1)), first_pos, length)


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    """An output's incoming gradient, zeros when autograd passes None (the output was unused)."""
    return torch.zeros_like(like) if grad is None else grad
