"""The LaCT reference: the chunk loop with the inner gradients taken by autograd (`torch.func`)
of the spelled-out inner loss, per-matrix Newton-Schulz and row renorm. Slow and obvious; shares
no code with `chunk.py` or `fused.py`, which the tests compare against it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import NEWTON_SCHULZ_STEPS, NS_EPS, RENORM_EPS, LactResult, Weights


def _mlp(W0: Tensor, W1: Tensor, W2: Tensor, x: Tensor) -> Tensor:
    """f(x) = W1 (silu(W0 x) * (W2 x)) for every token x of (B, H, n, d)."""
    gate = torch.einsum("bhij,bhtj->bhti", W0, x)
    up = torch.einsum("bhij,bhtj->bhti", W2, x)
    return torch.einsum("bhij,bhtj->bhti", W1, F.silu(gate) * up)


def _dot_objective(W0, W1, W2, k, v, rate) -> Tensor:
    """sum_t rate_t <f(k_t), v_t>: the negative inner loss, weighted per token."""
    return (rate[..., None] * _mlp(W0, W1, W2, k) * v).sum()


def _orthogonalise(G: Tensor) -> Tensor:
    """Quintic Newton-Schulz on each (r, c) matrix of G, one matrix at a time."""
    out = torch.empty_like(G)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in G.shape[:-2])).view(
        -1, G.dim() - 2
    ):
        X = G[tuple(index)]
        tall = X.shape[0] > X.shape[1]
        if tall:
            X = X.T
        X = X / (torch.linalg.matrix_norm(X) + NS_EPS)
        for a, b, c in NEWTON_SCHULZ_STEPS:
            gram = X @ X.T
            X = a * X + b * (gram @ X) + c * (gram @ (gram @ X))
        out[tuple(index)] = X.T if tall else X
    return out


def lact_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    momentum: Tensor | None,
    weights: Weights,
    norms: Weights,
    momentum_buffers: Weights | None = None,
    *,
    chunk_size: int,
    muon: bool,
) -> LactResult:
    """Apply, then update, chunk by chunk (shapes: `common`); always returns the final state."""
    W = list(weights)
    M = None
    if momentum is not None:
        M = (
            list(momentum_buffers)
            if momentum_buffers is not None
            else [torch.zeros_like(w) for w in W]
        )
    T = q.shape[2]
    outputs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        outputs.append(_mlp(*W, q[:, :, start:end]))
        if end - start < chunk_size:
            break  # a partial chunk is applied, never used to update
        kc, vc, lrc = k[:, :, start:end], v[:, :, start:end], lr[:, :, start:end]
        steps = []
        for j in range(3):  # the ascent direction of W_j, with W_j's own learning rate
            grad = torch.func.grad(_dot_objective, argnums=j)(*W, kc, vc, lrc[..., j])
            steps.append(grad)
        if M is not None:
            gate = momentum[:, :, start:end].mean(dim=2)[..., None, None]
            M = [step + gate * buffer for step, buffer in zip(steps, M, strict=True)]
            steps = list(M)
        if muon:
            steps = [_orthogonalise(step) for step in steps]
        W = [w + step for w, step in zip(W, steps, strict=True)]
        W = [
            w * (norm / (torch.linalg.vector_norm(w, dim=-1, keepdim=True) + RENORM_EPS))
            for w, norm in zip(W, norms, strict=True)
        ]
    o = torch.cat(outputs, dim=2) if outputs else q.new_zeros(q.shape)
    return LactResult(o, tuple(W), None if M is None else tuple(M))
