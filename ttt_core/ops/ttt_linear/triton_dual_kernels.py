"""Triton kernels of the TTT-Linear dual form (forward and backward); see `triton_dual.py`.

The only module of the project that imports triton. One program per (batch, head) walks the chunks
with the fast weight `W` (d x d, fp32) on chip. Tensors are contiguous: q, k, v, z (B, H, T, d)
with T a multiple of BLOCK; eta (B, H, T) fp32; W (B, H, d, d) fp32; ln weight/bias (H, d) fp32;
anchors (B, H, T // BLOCK, d, d) fp32.

Whether the kernels run in the CPU interpreter is decided by triton when they are decorated, i.e.
by TRITON_INTERPRET at the first import of this module; `INTERPRETED` records it. The kernels call
only triton builtins and this module's jit functions: library jit functions such as `tl.sum` and
`tl.zeros` are made when triton itself is imported, and the interpreter runs them only if
TRITON_INTERPRET=1 was set before that.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.standard import _sum_combine


@triton.jit
def _sum(x, axis: tl.constexpr):
    """`tl.sum(x, axis)` for fp32 x (the interpreter reduces triton's sum combiner with numpy)."""
    return tl.reduce(x, axis, _sum_combine)


@triton.jit
def _layer_norm_rows(x, D: tl.constexpr, eps):
    """x (n, D) fp32 -> (x_hat, 1/sigma) with biased variance, per row."""
    centered = x - (_sum(x, axis=1) / D)[:, None]
    rstd = 1.0 / tl.sqrt(_sum(centered * centered, axis=1) / D + eps)
    return centered * rstd[:, None], rstd


@triton.jit
def _layer_norm_backward_rows(dy, x_hat, rstd, D: tl.constexpr):
    """Gradient w.r.t. the LN input of an upstream `dy` on x_hat: (dy - mean(dy) - x_hat *
    mean(dy x_hat)) / sigma, per row."""
    mean_dy = _sum(dy, axis=1) / D
    mean_dy_x = _sum(dy * x_hat, axis=1) / D
    return (dy - mean_dy[:, None] - x_hat * mean_dy_x[:, None]) * rstd[:, None]


@triton.jit
def _chunk_forward(
    q,
    k,
    v,
    eta,
    W,
    ln_w,
    ln_b,
    causal,
    scale,
    eps,
    D: tl.constexpr,
    FP32_DOT: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """One chunk at anchor W. q, k, v (BLOCK, D) in the input dtype; eta (BLOCK,), W, ln_* fp32.

    Products with W, and Q K^T, take their operands in the input dtype (fp32 accumulate); the rest
    is fp32. Returns (x_hat1, rstd1, e, g, qk, a, x_hat2, rstd2): the inner LN of U = K W^T, the
    scaled residual E, the inner gradient G, Q K^T, the masked A, and the output LN of P.
    """
    w_in = W.to(q.dtype)
    if UPCAST_DOTS:
        # The interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584).
        # A bf16 x bf16 product is exact in fp32, so fp32 operands give the same products.
        w_in = w_in.to(tl.float32)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    u = tl.dot(k, tl.trans(w_in), input_precision=FP32_DOT)
    x_hat1, rstd1 = _layer_norm_rows(u, D, eps)
    e = scale * (k.to(tl.float32) + ln_w[None, :] * x_hat1 + ln_b[None, :] - v.to(tl.float32))
    g = _layer_norm_backward_rows(ln_w[None, :] * e, x_hat1, rstd1, D)
    qk = tl.dot(q, tl.trans(k), input_precision=FP32_DOT)
    a = tl.where(causal, qk * eta[None, :], 0.0)
    p = tl.dot(q, tl.trans(w_in), input_precision=FP32_DOT)
    p -= tl.dot(a, g, input_precision=FP32_DOT)
    x_hat2, rstd2 = _layer_norm_rows(p, D, eps)
    return x_hat1, rstd1, e, g, qk, a, x_hat2, rstd2


@triton.jit
def dual_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    eta_ptr,
    w0_ptr,
    ln_w_ptr,
    ln_b_ptr,
    z_ptr,
    w_out_ptr,
    anchors_ptr,
    n_chunks,
    H,
    scale,
    eps,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    FP32_DOT: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
    STORE_ANCHORS: tl.constexpr,
):
    """z and the final W; each chunk's anchor too when STORE_ANCHORS (for the backward)."""
    bh = tl.program_id(0).to(tl.int64)  # int64: anchor offsets pass 2**31 at production shapes
    offs_t = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    square = offs_d[:, None] * D + offs_d[None, :]
    causal = offs_t[:, None] > offs_t[None, :]
    ln_w = tl.load(ln_w_ptr + (bh % H) * D + offs_d)
    ln_b = tl.load(ln_b_ptr + (bh % H) * D + offs_d)
    W = tl.load(w0_ptr + bh * D * D + square)
    for c in range(n_chunks):
        rows = bh * n_chunks * BLOCK + c * BLOCK + offs_t
        tile = rows[:, None] * D + offs_d[None, :]
        q = tl.load(q_ptr + tile)
        k = tl.load(k_ptr + tile)
        v = tl.load(v_ptr + tile)
        eta = tl.load(eta_ptr + rows)
        if STORE_ANCHORS:
            tl.store(anchors_ptr + (bh * n_chunks + c) * D * D + square, W)
        _, _, _, g, _, _, x_hat2, _ = _chunk_forward(
            q, k, v, eta, W, ln_w, ln_b, causal, scale, eps, D, FP32_DOT, UPCAST_DOTS
        )
        z = q.to(tl.float32) + ln_w[None, :] * x_hat2 + ln_b[None, :]
        tl.store(z_ptr + tile, z.to(z_ptr.dtype.element_ty))
        # W_{c+1} = W_c - G^T diag(eta) K, accumulated in fp32.
        W -= tl.dot(tl.trans(eta[:, None] * g), k.to(tl.float32), input_precision=FP32_DOT)
    tl.store(w_out_ptr + bh * D * D + square, W)


@triton.jit
def dual_backward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    eta_ptr,
    ln_w_ptr,
    ln_b_ptr,
    anchors_ptr,
    dz_ptr,
    dw_out_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    deta_ptr,
    dw0_ptr,
    dln_w_ptr,
    dln_b_ptr,
    n_chunks,
    H,
    scale,
    eps,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    FP32_DOT: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """Chunks in reverse with dW (the gradient of the chunk's next anchor) on chip; recomputes each
    chunk from its stored anchor. Writes dq, dk, dv, deta, dW0 and this program's partial d ln_w,
    d ln_b ((B*H, D), summed over the batch by the caller)."""
    bh = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    square = offs_d[:, None] * D + offs_d[None, :]
    causal = offs_t[:, None] > offs_t[None, :]
    ln_w = tl.load(ln_w_ptr + (bh % H) * D + offs_d)
    ln_b = tl.load(ln_b_ptr + (bh % H) * D + offs_d)
    dW = tl.load(dw_out_ptr + bh * D * D + square)
    dln_w = tl.full((D,), 0.0, tl.float32)
    dln_b = tl.full((D,), 0.0, tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        rows = bh * n_chunks * BLOCK + c * BLOCK + offs_t
        tile = rows[:, None] * D + offs_d[None, :]
        q = tl.load(q_ptr + tile)
        k = tl.load(k_ptr + tile)
        v = tl.load(v_ptr + tile)
        eta = tl.load(eta_ptr + rows)
        dz = tl.load(dz_ptr + tile).to(tl.float32)
        W = tl.load(anchors_ptr + (bh * n_chunks + c) * D * D + square)
        x_hat1, rstd1, e, g, qk, a, x_hat2, rstd2 = _chunk_forward(
            q, k, v, eta, W, ln_w, ln_b, causal, scale, eps, D, FP32_DOT, UPCAST_DOTS
        )
        qf = q.to(tl.float32)
        kf = k.to(tl.float32)
        # z = q + ln_w * LN(P); P = Q W^T - A G
        dln_w += _sum(dz * x_hat2, axis=0)
        dln_b += _sum(dz, axis=0)
        dp = _layer_norm_backward_rows(ln_w[None, :] * dz, x_hat2, rstd2, D)
        da = -tl.dot(dp, tl.trans(g), input_precision=FP32_DOT)
        ds = tl.where(causal, da * eta[None, :], 0.0)  # gradient of Q K^T
        dq = dz + tl.dot(dp, W, input_precision=FP32_DOT) + tl.dot(ds, kf, input_precision=FP32_DOT)
        dk = tl.dot(tl.trans(ds), qf, input_precision=FP32_DOT)
        deta = _sum(tl.where(causal, da * qk, 0.0), axis=0)
        dg = -tl.dot(tl.trans(a), dp, input_precision=FP32_DOT)
        # W_next = W - G^T diag(eta) K, with dW = the gradient of W_next
        g_dw = tl.dot(g, dW, input_precision=FP32_DOT)
        dg -= eta[:, None] * tl.dot(kf, tl.trans(dW), input_precision=FP32_DOT)
        dk -= eta[:, None] * g_dw
        deta -= _sum(g_dw * kf, axis=1)
        # G = LN_backward(h = ln_w * E) at x_hat1, sigma1: through h, x_hat1 and sigma1
        h = ln_w[None, :] * e
        dh = _layer_norm_backward_rows(dg, x_hat1, rstd1, D)
        t = dg * rstd1[:, None]
        dx_hat = -t * (_sum(h * x_hat1, axis=1) / D)[:, None]
        dx_hat -= h * (_sum(t * x_hat1, axis=1) / D)[:, None]
        dsigma = -_sum(g * dg, axis=1) * rstd1
        dln_w += _sum(e * dh, axis=0)
        # E = scale * (K + ln_w * x_hat1 + ln_b - V)
        dr = scale * ln_w[None, :] * dh
        dk += dr
        dln_w += _sum(dr * x_hat1, axis=0)
        dln_b += _sum(dr, axis=0)
        dx_hat += ln_w[None, :] * dr
        # x_hat1, sigma1 = LN(U = K W^T)
        du = _layer_norm_backward_rows(dx_hat, x_hat1, rstd1, D)
        du += (dsigma / D)[:, None] * x_hat1
        dk += tl.dot(du, W, input_precision=FP32_DOT)
        dW += tl.dot(tl.trans(dp), qf, input_precision=FP32_DOT)
        dW += tl.dot(tl.trans(du), kf, input_precision=FP32_DOT)
        tl.store(dq_ptr + tile, dq.to(dq_ptr.dtype.element_ty))
        tl.store(dk_ptr + tile, dk.to(dk_ptr.dtype.element_ty))
        tl.store(dv_ptr + tile, (-dr).to(dv_ptr.dtype.element_ty))
        tl.store(deta_ptr + rows, deta)
    tl.store(dw0_ptr + bh * D * D + square, dW)
    tl.store(dln_w_ptr + bh * D + offs_d, dln_w)
    tl.store(dln_b_ptr + bh * D + offs_d, dln_b)


INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
