"""LaCT with a hand-written backward: one `torch.autograd.Function` over the whole chunk loop.

Forward runs `chunk.py`'s loop without a graph and saves only the fast weights (and momentum
buffers) at the start of each chunk: 3 (or 6) (d, d) matrices per head and chunk, instead of
autograd's per-token activations of every chunk. Backward walks the chunks in reverse; for each
it recomputes that chunk's apply and update from its saved weights and pulls the cotangents of
the outputs and of the next chunk's weights back through it, so at most one chunk's activations
are alive at a time (the LaCT seed's `StackedTTTFunction`, "to solve memory issues")."""

from __future__ import annotations

import torch
from torch import Tensor

from .chunk import chunk_spans, chunk_step, swiglu_apply
from .common import LactResult, Weights


class _LactFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, chunk_size, muon, need_state, q, k, v, lr, gate, *flat):
        weights, norms = tuple(flat[0:3]), tuple(flat[3:6])
        M = tuple(flat[6:9]) if gate is not None else None  # `lact_fused` passes zeros to start
        spans = chunk_spans(q.shape[2], chunk_size, need_state)
        o = torch.zeros_like(q)
        saved = []
        for start, end, updates in spans:
            saved.extend(weights + (M or ()))
            o[:, :, start:end] = swiglu_apply(weights, q[:, :, start:end])
            if updates:
                window = slice(start, end)
                chunk_gate = None if gate is None else gate[:, :, window]
                weights, M = chunk_step(
                    weights, M, k[:, :, window], v[:, :, window], lr[:, :, window],
                    chunk_gate, norms, muon,
                )  # fmt: skip
        ctx.spans, ctx.muon, ctx.has_momentum = spans, muon, gate is not None
        ctx.save_for_backward(q, k, v, lr, gate, *norms, *saved)
        M = M or tuple(torch.zeros_like(w) for w in weights)
        # fresh tensors: an input returned as an output would alias it in the graph
        return (o, *(t.clone() for t in weights + M))

    @staticmethod
    def backward(ctx, g_o, *g_state):
        q, k, v, lr, gate, *rest = ctx.saved_tensors
        norms, saved = tuple(rest[:3]), rest[3:]
        per_chunk = 6 if ctx.has_momentum else 3
        g_W = tuple(g_state[:3])
        g_M = tuple(g_state[3:6]) if ctx.has_momentum else ()
        grads = {
            name: torch.zeros_like(t) for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr))
        }
        g_gate = torch.zeros_like(gate) if gate is not None else None
        g_norms = [torch.zeros_like(n) for n in norms]
        for index in range(len(ctx.spans) - 1, -1, -1):
            start, end, updates = ctx.spans[index]
            window = slice(start, end)
            state = saved[index * per_chunk : (index + 1) * per_chunk]
            with torch.enable_grad():
                W = tuple(t.detach().requires_grad_() for t in state[:3])
                M = tuple(t.detach().requires_grad_() for t in state[3:]) or None
                qc = q[:, :, window].detach().requires_grad_()
                o = swiglu_apply(W, qc)
                outputs, cotangents, inputs = [o], [g_o[:, :, window]], [qc, *W]
                if updates:
                    kc, vc, lrc = (t[:, :, window].detach().requires_grad_() for t in (k, v, lr))
                    gc = None if gate is None else gate[:, :, window].detach().requires_grad_()
                    n = tuple(t.detach().requires_grad_() for t in norms)
                    W_next, M_next = chunk_step(W, M, kc, vc, lrc, gc, n, ctx.muon)
                    outputs += [*W_next, *(M_next or ())]
                    cotangents += [*g_W, *g_M]
                    inputs += [*(M or ()), kc, vc, lrc, *n] + ([gc] if gc is not None else [])
                pulled = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
            pulled = [
                torch.zeros_like(t) if g is None else g for g, t in zip(pulled, inputs, strict=True)
            ]
            grads["q"][:, :, window] = pulled[0]
            W_grads = pulled[1:4]
            if updates:
                nM = 3 if M is not None else 0
                M_grads = pulled[4 : 4 + nM]
                g_k, g_v, g_lr = pulled[4 + nM : 7 + nM]
                grads["k"][:, :, window] = g_k
                grads["v"][:, :, window] = g_v
                grads["lr"][:, :, window] = g_lr
                for acc, g in zip(g_norms, pulled[7 + nM : 10 + nM], strict=True):
                    acc += g
                if gc is not None:
                    g_gate[:, :, window] = pulled[10 + nM]
                g_W, g_M = tuple(W_grads), tuple(M_grads)
            else:  # the weights it read are the returned state: their cotangent adds up
                g_W = tuple(a + b for a, b in zip(g_W, W_grads, strict=True))
        g_flat = [*g_W, *g_norms, *(g_M if ctx.has_momentum else (None,) * 3)]
        return (None, None, None, grads["q"], grads["k"], grads["v"], grads["lr"], g_gate, *g_flat)


def lact_fused(
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
    """`chunk.lact_chunked` with the hand-written backward above; same signature and results."""
    buffers = momentum_buffers
    if momentum is not None and buffers is None:
        buffers = tuple(torch.zeros_like(w) for w in weights)
    flat = (*weights, *norms, *(buffers if momentum is not None else (None, None, None)))
    o, *state = _LactFunction.apply(chunk_size, muon, need_state, q, k, v, lr, momentum, *flat)
    if not need_state:
        return LactResult(o, None, None)
    return LactResult(o, tuple(state[:3]), tuple(state[3:]) if momentum is not None else None)
