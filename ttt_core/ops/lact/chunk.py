"""LaCT as large batched matmuls: per chunk, apply the fast SwiGLU MLP to the chunk's queries,
then one update from the chunk's keys and values with the inner gradients derived by hand
(docs/lact.md). Differentiated by autograd ("autograd" backend); `fused.py` reuses `chunk_step`
inside its hand-written backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import NEWTON_SCHULZ_STEPS, NS_EPS, RENORM_EPS, LactResult, Weights


def swiglu_apply(weights: Weights, x: Tensor) -> Tensor:
    """W1 (silu(W0 x) * (W2 x)) for x (B, H, n, d) as rows: (B, H, n, d)."""
    W0, W1, W2 = weights
    return (F.silu(x @ W0.mT) * (x @ W2.mT)) @ W1.mT


def ascent_directions(weights: Weights, k: Tensor, v: Tensor, lr: Tensor) -> Weights:
    """-grad of the inner loss -sum_t lr_t <f(k_t), v_t> for W0, W1, W2 (each with its own lr
    column of lr (B, H, n, 3)), by hand: with g = W0 k, u = W2 k, the hidden silu(g) * u and
    its cotangent W1^T v, dW1 = sum lr1 v hidden^T, dW2 = sum lr2 (W1^T v * silu(g)) k^T,
    dW0 = sum lr0 (W1^T v * u * silu'(g)) k^T."""
    W0, W1, W2 = weights
    g, u = k @ W0.mT, k @ W2.mT  # (B, H, n, d_inner)
    sig = torch.sigmoid(g)
    silu_g = g * sig
    d_hidden = v @ W1  # (B, H, n, d_inner)
    d_up = d_hidden * silu_g
    d_gate = d_hidden * u * sig * (1 + g * (1 - sig))
    dW0 = (d_gate * lr[..., 0:1]).mT @ k
    dW1 = (v * lr[..., 1:2]).mT @ (silu_g * u)
    dW2 = (d_up * lr[..., 2:3]).mT @ k
    return dW0, dW1, dW2


def newton_schulz(G: Tensor) -> Tensor:
    """The quintic Newton-Schulz orthogonalisation of every (r, c) matrix of G (..., r, c)."""
    tall = G.shape[-2] > G.shape[-1]
    X = G.mT if tall else G
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + NS_EPS)
    for a, b, c in NEWTON_SCHULZ_STEPS:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def renorm_rows(W: Tensor, norm: Tensor) -> Tensor:
    """W with each row rescaled to `norm` (the row norms of the slow weight)."""
    return W / (W.norm(dim=-1, keepdim=True) + RENORM_EPS) * norm


def chunk_step(
    weights: Weights,
    momentum_buffers: Weights | None,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    gate: Tensor | None,
    norms: Weights,
    muon: bool,
) -> tuple[Weights, Weights | None]:
    """One chunk's update: (weights, momentum buffers) after it. gate (B, H, n) is the chunk's
    momentum gate (averaged here); None without momentum."""
    steps = ascent_directions(weights, k, v, lr)
    if momentum_buffers is not None:
        mean_gate = gate.mean(dim=2)[..., None, None]
        steps = tuple(s + mean_gate * m for s, m in zip(steps, momentum_buffers, strict=True))
        momentum_buffers = steps
    if muon:
        steps = tuple(newton_schulz(s) for s in steps)
    new = tuple(renorm_rows(w + s, n) for w, s, n in zip(weights, steps, norms, strict=True))
    return new, momentum_buffers


def chunk_spans(T: int, chunk_size: int, need_state: bool) -> list[tuple[int, int, bool]]:
    """(start, end, updates) per chunk of T tokens: a chunk updates when it is complete, except
    the last one when no state is asked for (no output reads that update)."""
    spans = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        spans.append((start, end, end - start == chunk_size and (end < T or need_state)))
    return spans


def initial_momentum(weights: Weights, gate: Tensor | None, buffers: Weights | None):
    """Zero buffers at the start of a sequence, the given ones when continuing; None without a gate."""
    if gate is None:
        return None
    return buffers if buffers is not None else tuple(torch.zeros_like(w) for w in weights)


def lact_chunked(
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
    need_state: bool = True,
) -> LactResult:
    """Apply, then update, chunk by chunk (shapes: `ops.lact.common`). Without `need_state`
    the update after the last chunk, which no output reads, is skipped."""
    T = q.shape[2]
    M = initial_momentum(weights, momentum, momentum_buffers)
    outputs = []
    for start, end, updates in chunk_spans(T, chunk_size, need_state):
        outputs.append(swiglu_apply(weights, q[:, :, start:end]))
        if not updates:
            break
        window = slice(start, end)
        gate = None if momentum is None else momentum[:, :, window]
        weights, M = chunk_step(
            weights, M, k[:, :, window], v[:, :, window], lr[:, :, window], gate, norms, muon
        )
    o = torch.cat(outputs, dim=2) if outputs else torch.zeros_like(q)
    if not need_state:
        return LactResult(o, None, None)
    return LactResult(o, weights, M)
