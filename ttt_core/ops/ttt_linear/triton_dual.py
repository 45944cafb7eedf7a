"""The dual form as fused Triton kernels, forward and backward (`ttt_linear_dual_triton`).

Design: one program per (batch, head) walks the chunks holding the fast weight W (d x d, fp32) on
chip. The forward writes z, the final W and, when a gradient is needed, every chunk's anchor W_c
((B, H, T / b, d, d), fp32). The backward walks the chunks in reverse holding dW on chip, reloads
W_c, recomputes the chunk's intermediates and writes dq, dk, dv, deta, per-program partial
d ln_weight / d ln_bias (summed here over the batch) and, at the end, dW0.

The kernels live in `triton_dual_kernels` (the only module that imports triton), imported on first
use, so this module imports without triton and `triton_unavailable_reason` can say why it is
missing.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .common import check_inputs, no_autocast

KERNELS_MODULE = "ttt_core.ops.ttt_linear.triton_dual_kernels"
INPUT_DTYPES = (torch.float32, torch.bfloat16)
MIN_TILE = 16  # tl.dot needs every dimension >= 16
MAX_HEAD_DIM = 128  # the program keeps W and dW (d x d fp32 each) in registers
MAX_CHUNK = 128


def _kernels() -> ModuleType:
    """The kernels module, looked up on every call (a test may re-import it in interpreter mode)."""
    return importlib.import_module(KERNELS_MODULE)


def _power_of_two_in(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def triton_unavailable_reason(device: torch.device, head_dim: int, chunk_size: int) -> str | None:
    """None when the Triton dual kernels can run for tensors on `device`, else a one-line reason."""
    try:
        kernels = _kernels()
    except ImportError as exc:
        return f"triton is not importable ({exc}); install the extra: pip install -e .[triton]"
    if device.type != "cuda" and not kernels.INTERPRETED:
        now = os.environ.get("TRITON_INTERPRET")
        return (
            f"tensors are on {device.type}, and the Triton kernels run off CUDA only in the "
            f"interpreter: TRITON_INTERPRET=1 must be set before {KERNELS_MODULE} is first "
            f"imported (TRITON_INTERPRET is {now!r} now)"
        )
    if not _power_of_two_in(head_dim, MIN_TILE, MAX_HEAD_DIM):
        return (
            f"head_dim {head_dim} unsupported: needs a power of two in [{MIN_TILE}, {MAX_HEAD_DIM}]"
        )
    if not _power_of_two_in(chunk_size, MIN_TILE, MAX_CHUNK):
        return f"chunk_size {chunk_size} unsupported: needs a power of two in [{MIN_TILE}, {MAX_CHUNK}]"
    return None


def ttt_linear_dual_triton(
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
) -> tuple[Tensor, Tensor]:
    """`ttt_linear_dual` as Triton kernels: same shapes and semantics, differentiable w.r.t. every
    input, with a gradient flowing in through W_next too.

    q, k, v (B, H, T, d) fp32 or bf16 (one dtype); eta (B, H, T); W (B, H, d, d) fp32; ln_* (H, d).
    Any T (padded with eta = 0 and zero q/k/v, trimmed). Returns z (B, H, T, d) in q's dtype and
    W_next (B, H, d, d) fp32. Products with W and Q K^T run in the input dtype, the rest in fp32;
    the fp32 products are exact ("ieee") for fp32 inputs and tf32 on GPU for bf16 inputs.
    No `first_pos`, `anchor` or inner-loss statistics: callers that need them use `dual_scan`.
    Raises ValueError when the kernels cannot run here (`triton_unavailable_reason`).
    """
    check_inputs(q, k, v, eta, W, ln_weight, ln_bias)
    T, d = q.shape[2:]
    reason = triton_unavailable_reason(q.device, d, chunk_size)
    if reason is not None:
        raise ValueError(f"backend triton: {reason}")
    if q.dtype not in INPUT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one dtype in {INPUT_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if W.dtype != torch.float32:
        raise ValueError(f"W must be fp32 for the triton backend, got {W.dtype}")
    inputs = (q, k, v, eta, W, ln_weight, ln_bias)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    pad = -T % chunk_size
    with no_autocast(q.device):
        # Padded slots: zero q/k/v and eta = 0, so they move neither W nor any real output.
        q, k, v = (F.pad(x, (0, 0, 0, pad)).contiguous() for x in (q, k, v))
        eta = F.pad(eta.float(), (0, pad)).contiguous()
        args = (q, k, v, eta, W.contiguous(), ln_weight.float().contiguous())
        args += (ln_bias.float().contiguous(), chunk_size, eps)
        if needs_grad:
            z, W_next = _TritonDual.apply(*args)
        else:  # inference: no anchors stored
            z, W_next, _ = _forward(*args, store_anchors=False)
    return z[:, :, :T], W_next


def launch_options(interpreted: bool, dtype: torch.dtype, head_dim: int) -> dict[str, object]:
    """Compile-time options shared by both kernels, for inputs of `dtype`.

    FP32_DOT: precision of the fp32 x fp32 products, exact for fp32 inputs, tf32 beside bf16 ones.
    UPCAST_DOTS: under the interpreter, bf16 products run on fp32 operands (the same values).
    num_warps: more threads at d = 128, so that W and dW (d x d fp32 each) fit in registers.
    num_stages = 1: pipelining the chunk loop's loads would stage the d x d anchor tile several
    times in shared memory (the d = 128 backward then wants more than the 227 KiB of an H100).
    enable_fp_fusion: fused multiply-adds, pinned (triton 3.10 turns its default off).
    Upper-case keys are the kernels' constexprs, lower-case ones triton's compile options.
    """
    fp32 = dtype == torch.float32
    return {
        "FP32_DOT": "ieee" if fp32 else "tf32",
        "UPCAST_DOTS": interpreted and not fp32,
        "num_warps": 8 if head_dim > 64 else 4,
        "num_stages": 1,
        "enable_fp_fusion": True,
    }


def _forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    W: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    chunk_size: int,
    eps: float,
    *,
    store_anchors: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Launch the forward on padded contiguous inputs: (z, W_next, anchors or None)."""
    B, H, T, d = q.shape
    n_chunks = T // chunk_size
    z = torch.empty_like(q)
    W_next = torch.empty_like(W)
    anchors = W.new_empty(B, H, n_chunks, d, d) if store_anchors else None
    kernels = _kernels()
    kernels.dual_forward_kernel[(B * H,)](
        q,
        k,
        v,
        eta,
        W,
        ln_weight,
        ln_bias,
        z,
        W_next,
        W_next if anchors is None else anchors,  # never written when STORE_ANCHORS is off
        n_chunks,
        H,
        2.0 / chunk_size,
        eps,
        D=d,
        BLOCK=chunk_size,
        STORE_ANCHORS=store_anchors,
        **launch_options(kernels.INTERPRETED, q.dtype, d),
    )
    return z, W_next, anchors


class _TritonDual(torch.autograd.Function):
    """The fused op on padded contiguous inputs (eta, ln_* fp32); backward per the module doc."""

    @staticmethod
    def forward(ctx, q, k, v, eta, W, ln_weight, ln_bias, chunk_size, eps):
        z, W_next, anchors = _forward(
            q, k, v, eta, W, ln_weight, ln_bias, chunk_size, eps, store_anchors=True
        )
        ctx.save_for_backward(q, k, v, eta, ln_weight, ln_bias, anchors)
        ctx.chunk_size, ctx.eps = chunk_size, eps
        return z, W_next

    @staticmethod
    @once_differentiable  # the kernels compute first-order gradients only
    def backward(ctx, dz, dW_next):
        q, k, v, eta, ln_weight, ln_bias, anchors = ctx.saved_tensors
        B, H, T, d = q.shape
        dz, dW_next = dz.contiguous(), dW_next.float().contiguous()  # both materialised by autograd
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        deta = torch.empty_like(eta)
        dW = torch.empty_like(dW_next)
        dln_weight = ln_weight.new_empty(B, H, d)
        dln_bias = ln_bias.new_empty(B, H, d)
        kernels = _kernels()
        kernels.dual_backward_kernel[(B * H,)](
            q,
            k,
            v,
            eta,
            ln_weight,
            ln_bias,
            anchors,
            dz,
            dW_next,
            dq,
            dk,
            dv,
            deta,
            dW,
            dln_weight,
            dln_bias,
            T // ctx.chunk_size,
            H,
            2.0 / ctx.chunk_size,
            ctx.eps,
            D=d,
            BLOCK=ctx.chunk_size,
            **launch_options(kernels.INTERPRETED, q.dtype, d),
        )
        return dq, dk, dv, deta, dW, dln_weight.sum(0), dln_bias.sum(0), None, None
