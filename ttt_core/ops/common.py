"""Pieces shared by every TTT-Linear op: input checks, the inner LayerNorm and its analytic
backward, and dtype rules.

Conventions (see `docs/ttt_linear.md`): `q, k, v (B, H, T, d)`, `eta (B, H, T)`,
fast weight `W (B, H, d, d)` acting on row vectors as `z @ W^T`, LN parameters `(H, d)`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def state_dtype(W: Tensor) -> torch.dtype:
    """The dtype the fast weight is kept in: fp32, or fp64 when the caller works in fp64."""
    return torch.promote_types(W.dtype, torch.float32)


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W: Tensor, ln_weight: Tensor, ln_bias: Tensor
) -> None:
    """Raise a ValueError naming the first argument whose shape breaks the op's contract."""
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, T, d), got shape {tuple(q.shape)}")
    B, H, T, d = q.shape
    expected = {
        "k": (k, (B, H, T, d)),
        "v": (v, (B, H, T, d)),
        "eta": (eta, (B, H, T)),
        "W": (W, (B, H, d, d)),
        "ln_weight": (ln_weight, (H, d)),
        "ln_bias": (ln_bias, (H, d)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if not W.is_floating_point() or W.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"W must be fp32 (or fp64 in tests), got {W.dtype}")


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The ops choose their own precision per product; autocast must not second-guess them."""
    return torch.autocast(device_type=device.type, enabled=False)


def inner_ln(u: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head LayerNorm over the last dim, biased variance.

    u: (B, H, n, d); weight, bias: (H, d). Returns (LN(u), x_hat, sigma) with sigma (B, H, n, 1).
    """
    mu = u.mean(dim=-1, keepdim=True)
    var = (u - mu).pow(2).mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(var + eps)
    x_hat = (u - mu) / sigma
    return weight[:, None, :] * x_hat + bias[:, None, :], x_hat, sigma


def inner_ln_backward(e: Tensor, x_hat: Tensor, sigma: Tensor, weight: Tensor) -> Tensor:
    """Analytic d(LN)/du applied to the upstream gradient `e` (same shapes as `inner_ln`)."""
    ge = weight[:, None, :] * e
    return (
        ge - ge.mean(dim=-1, keepdim=True) - x_hat * (ge * x_hat).mean(dim=-1, keepdim=True)
    ) / sigma


def inner_residual(
    k: Tensor, v: Tensor, W: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Residual `r_s = f(k_s; W) - v_s` of the inner loss, with the LN's x_hat and sigma.

    k, v: (B, H, n, d) in the activation dtype; W: (B, H, d, d) in the state dtype. Results are in
    W's dtype; `W k` is formed in the activation dtype (W cast for that product only).
    """
    sd = W.dtype
    u = (k @ W.to(k.dtype).transpose(-1, -2)).to(sd)
    ln_u, x_hat, sigma = inner_ln(u, ln_weight.to(sd), ln_bias.to(sd), eps)
    return k.to(sd) + ln_u - v.to(sd), x_hat, sigma


def inner_grad(
    k: Tensor, v: Tensor, W: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float, scale: float
) -> tuple[Tensor, Tensor]:
    """Inner-loss gradient factors at a fixed `W`: returns (g, r), both (B, H, n, d).

    `g_s = LN_backward(W k_s, scale * r_s)`, so the gradient of `scale/2 * ||r_s||^2` w.r.t. `W`
    is `g_s k_s^T` (scale = 2/b gives the chunk-mean loss of the spec).
    """
    r, x_hat, sigma = inner_residual(k, v, W, ln_weight, ln_bias, eps)
    return inner_ln_backward(scale * r, x_hat, sigma, ln_weight.to(W.dtype)), r


def inner_output(q: Tensor, W: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float) -> Tensor:
    """`f(q; W) = q + LN(W q)` for q (B, H, n, d) and one W (B, H, d, d); result in W's dtype."""
    sd = W.dtype
    u = (q @ W.to(q.dtype).transpose(-1, -2)).to(sd)
    return q.to(sd) + inner_ln(u, ln_weight.to(sd), ln_bias.to(sd), eps)[0]


def outer_update(g: Tensor, eta: Tensor, k: Tensor) -> Tensor:
    """Sum over tokens of `eta_s g_s k_s^T`: g (B, H, n, d) state dtype, eta (B, H, n), k (B, H, n, d).

    Accumulated in g's (state) dtype, never in the activation dtype.
    """
    return (g * eta.to(g.dtype)[..., None]).transpose(-1, -2) @ k.to(g.dtype)
