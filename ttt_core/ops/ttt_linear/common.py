"""Pieces shared by every TTT-Linear op: input checks, the inner LayerNorm and its analytic
backward, and dtype rules.

Conventions (see `docs/ttt_linear.md`): `q, k, v (B, H, T, d)`, `eta (B, H, T)`,
fast weight `W (B, H, d, d)` acting on row vectors as `z @ W^T`, LN parameters `(H, d)`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ...precision import wide_dtype


def state_dtype(W: Tensor) -> torch.dtype:
    """The dtype the fast weight is kept in: fp32, or fp64 when the caller works in fp64."""
    return wide_dtype(W.dtype)


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


def check_scan_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    chunk_size: int,
    first_pos: int,
) -> None:
    """`check_inputs` plus the chunk arguments of a dual-form scan."""
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= first_pos < chunk_size:
        raise ValueError(f"first_pos must be in [0, {chunk_size}), got {first_pos}")


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The ops choose their own precision per product; autocast must not second-guess them."""
    return torch.autocast(device_type=device.type, enabled=False)


def inner_ln(u: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-head LayerNorm over the last dim, biased variance.

    u: (B, H, n, d); weight, bias: (H, d). Returns (LN(u), x_hat, sigma) with sigma (B, H, n, 1).
    """
    centered = u - u.mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(centered.pow(2).mean(dim=-1, keepdim=True) + eps)
    x_hat = centered / sigma
    return weight[:, None, :] * x_hat + bias[:, None, :], x_hat, sigma


def inner_ln_backward(e: Tensor, x_hat: Tensor, sigma: Tensor, weight: Tensor) -> Tensor:
    """Analytic d(LN)/du applied to the upstream gradient `e` (same shapes as `inner_ln`)."""
    ge = weight[:, None, :] * e
    return (
        ge - ge.mean(dim=-1, keepdim=True) - x_hat * (ge * x_hat).mean(dim=-1, keepdim=True)
    ) / sigma


def fast_weight_product(x: Tensor, W: Tensor) -> Tensor:
    """`x W^T` for row vectors x (..., n, d) in the activation dtype and W (..., d, d) in the state
    dtype: the product runs in the activation dtype (W cast for it only), the result is in W's."""
    return (x @ W.to(x.dtype).transpose(-1, -2)).to(W.dtype)


def residual_from_u(
    u: Tensor, k: Tensor, v: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """`r = k + LN(u) - v` for the pre-LN activations `u = W k` (state dtype), with LN's x_hat and
    sigma. ln_weight, ln_bias must already be in u's dtype."""
    ln_u, x_hat, sigma = inner_ln(u, ln_weight, ln_bias, eps)
    return k.to(u.dtype) + ln_u - v.to(u.dtype), x_hat, sigma


def inner_residual(
    k: Tensor, v: Tensor, W: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Residual `r_s = f(k_s; W) - v_s` of the inner loss, with the LN's x_hat and sigma.

    k, v: (B, H, n, d) in the activation dtype; W: (B, H, d, d) in the state dtype. Results are in
    W's dtype; `W k` is formed in the activation dtype (W cast for that product only).
    """
    sd = W.dtype
    u = fast_weight_product(k, W)
    return residual_from_u(u, k, v, ln_weight.to(sd), ln_bias.to(sd), eps)


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
    u = fast_weight_product(q, W)
    return q.to(sd) + inner_ln(u, ln_weight.to(sd), ln_bias.to(sd), eps)[0]


def outer_update(g: Tensor, eta: Tensor, k: Tensor) -> Tensor:
    """Sum over tokens of `eta_s g_s k_s^T`: g (B, H, n, d) state dtype, eta (B, H, n), k (B, H, n, d).

    Accumulated in g's (state) dtype, never in the activation dtype.
    """
    return (g * eta.to(g.dtype)[..., None]).transpose(-1, -2) @ k.to(g.dtype)


def to_chunks(x: Tensor, chunk_size: int, first_pos: int, n_chunks: int) -> Tensor:
    """(B, H, T[, d]) -> (B, H, n_chunks, chunk_size[, d]): `first_pos` zero slots in front (the
    chunk's earlier tokens) and zeros after the last token up to the chunk grid."""
    pad = n_chunks * chunk_size - first_pos - x.shape[2]
    widths = (first_pos, pad) if x.dim() == 3 else (0, 0, first_pos, pad)
    return F.pad(x, widths).unflatten(2, (n_chunks, chunk_size))


def from_chunks(x: Tensor, first_pos: int, length: int) -> Tensor:
    """Inverse of `to_chunks`: (B, H, n, b[, d]) -> (B, H, length[, d]), padding dropped."""
    return x.flatten(2, 3)[:, :, first_pos : first_pos + length]


def strictly_lower(chunk_size: int, device: torch.device) -> Tensor:
    """(b, b) bool, True where column s < row t: token t sees the updates of earlier tokens only."""
    return torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=device).tril(-1)


def masked_scores(q: Tensor, k: Tensor, eta: Tensor) -> Tensor:
    """`A = (Q K^T) * M * eta_col` per chunk: q, k (..., b, d), eta (..., b) in the state dtype.

    `Q K^T` runs in the activation dtype; the result is in eta's (state) dtype."""
    mask = strictly_lower(q.shape[-2], q.device)
    return (q @ k.transpose(-1, -2)).to(eta.dtype) * mask * eta[..., None, :]


def real_slots(chunk: int, n_chunks: int, chunk_size: int, first_pos: int, pad: int) -> slice:
    """The unpadded slots of chunk `chunk` (front padding in the first, back padding in the last)."""
    start = first_pos if chunk == 0 else 0
    return slice(start, chunk_size - pad if chunk == n_chunks - 1 else chunk_size)


@torch.no_grad()
def chunk_inner_loss(
    r_anchor: Tensor,
    k: Tensor,
    v: Tensor,
    W_next: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    eps: float,
    real: slice,
) -> Tensor:
    """[sum ||r||^2 at the anchor, sum ||r||^2 at W_next] over the chunk's real (unpadded) slots,
    fp32 (2,), detached: the diagnostic `return_stats` reports."""
    r_after = inner_residual(k, v, W_next, ln_weight, ln_bias, eps)[0]
    before = r_anchor[..., real, :].float().pow(2).sum()
    after = r_after[..., real, :].float().pow(2).sum()
    return torch.stack([before, after])
