"""One entry point for the TTT-Linear dual form, several implementations (`backend=`, the
names of `ttt_core.ops.backends`):

- "autograd": `dual.autograd_dual_scan`, the Python chunk loop differentiated by autograd; the
  reference the others are tested against (next to the primal reference).
- "fused": `fused.fused_dual_scan`, the same loop with a hand-written backward that keeps four
  (b, d) activations per chunk and one (d, d) weight per `checkpoint_chunks` chunks (about
  every sqrt(n)-th by default) instead of autograd's graph.
- "triton": `triton_dual.ttt_linear_dual_triton`, Triton kernels with the fast weight on chip
  (CUDA, or the CPU interpreter under TRITON_INTERPRET=1); optional extra `[triton]`.
- "auto": triton on CUDA when it can run there, else fused.

The Triton kernels return (z, W_next) for a scan from a chunk boundary: `dual_scan` uses them
when nothing else is asked of it (no `first_pos`/`anchor` as in decode-time prefill, no
inner-loss statistics, T a multiple of the chunk so the last anchor is W_next); such calls run
on the fused backend instead.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..backends import OPS_BACKENDS, OpsBackend
from .dual import DualResult, autograd_dual_scan
from .fused import fused_dual_scan


def triton_unavailable(device: torch.device, head_dim: int, chunk_size: int) -> str | None:
    """None when the Triton kernels can run for tensors on `device` with this head size and
    chunk size, else the reason they cannot (one line)."""
    try:
        from . import triton_dual
    except ImportError as e:
        return f"triton is not importable ({e}); install the extra: pip install -e '.[triton]'"
    return triton_dual.triton_unavailable_reason(device, head_dim, chunk_size)


def resolve_backend(backend: str, device: torch.device, head_dim: int, chunk_size: int) -> str:
    """The concrete backend ("autograd", "fused" or "triton") `backend` means for these inputs.

    Raises ValueError for an unknown name, or for "triton" where the kernels cannot run (naming
    why): an explicit request is never silently replaced by another backend."""
    if backend not in OPS_BACKENDS:
        raise ValueError(f"unknown ops backend {backend!r}; choose one of {list(OPS_BACKENDS)}")
    if backend == "autograd" or backend == "fused":
        return backend
    reason = triton_unavailable(device, head_dim, chunk_size)
    if backend == "triton":
        if reason is not None:
            raise ValueError(f"ops backend 'triton' cannot run here: {reason}")
        return "triton"
    return "triton" if reason is None and device.type == "cuda" else "fused"


def dual_scan(
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
    backend: OpsBackend = "auto",
    checkpoint_chunks: int = 0,
) -> DualResult:
    """The dual form over q, k, v (B, H, T, d), eta (B, H, T) from fast weight W (B, H, d, d).

    first_pos: position in its chunk of the first token (0 <= first_pos < chunk_size); anchor:
    the chunk's anchor when the caller already applied some of its updates (W = anchor - running
    sum). checkpoint_chunks: checkpointing through time — backward keeps the state of every
    `checkpoint_chunks`-th chunk and recomputes the rest (the fused backend by replaying its
    updates, the others under `torch.utils.checkpoint` in segments); 0: the backend's default
    (fused keeps every ~sqrt(n)-th, the others every chunk). Results do not depend on it.
    Returns `DualResult` (z in q's dtype, W and anchor in the state dtype)."""
    if checkpoint_chunks < 0:
        raise ValueError(f"checkpoint_chunks must be >= 0, got {checkpoint_chunks}")
    chosen = resolve_backend(backend, q.device, q.shape[-1], chunk_size)
    options = dict(chunk_size=chunk_size, eps=eps, with_inner_loss=with_inner_loss)
    if chosen == "fused":
        return fused_dual_scan(
            q, k, v, eta, W, ln_weight, ln_bias, **options, first_pos=first_pos, anchor=anchor,
            weight_stride=checkpoint_chunks or None,
        )  # fmt: skip
    scan = partial(_scan_with, chosen, ln_weight=ln_weight, ln_bias=ln_bias, **options)
    if checkpoint_chunks == 0 or not torch.is_grad_enabled():
        return scan(q, k, v, eta, W, first_pos=first_pos, anchor=anchor)
    return _checkpointed(scan, q, k, v, eta, W, first_pos, anchor, checkpoint_chunks * chunk_size)


def _scan_with(backend: str, q, k, v, eta, W, *, first_pos, anchor, **options) -> DualResult:
    """One scan on `backend` ("autograd" or "triton"; see the module docstring for the calls
    the Triton kernels hand to the fused backend)."""
    if backend == "autograd":
        return autograd_dual_scan(q, k, v, eta, W, first_pos=first_pos, anchor=anchor, **options)
    b = options["chunk_size"]
    plain = first_pos == 0 and anchor is None and q.shape[2] % b == 0
    if plain and not options["with_inner_loss"]:
        z, W_next = _triton(q, k, v, eta, W, options["ln_weight"], options["ln_bias"],
                            chunk_size=b, eps=options["eps"])  # fmt: skip
        return DualResult(z, W_next, W_next, None)
    return fused_dual_scan(q, k, v, eta, W, first_pos=first_pos, anchor=anchor, **options)


def _checkpointed(
    scan, q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W: Tensor, first_pos: int,
    anchor: Tensor | None, segment: int,
) -> DualResult:  # fmt: skip
    """`scan` over the sequence in segments of `segment` tokens (the first one ends on the chunk
    grid), each under `torch.utils.checkpoint`, so backward keeps only segment-boundary W."""
    T = q.shape[2]
    pos, start, parts = first_pos, 0, []
    while start < T:
        n = min(T - start, segment - pos)
        window = slice(start, start + n)
        part = checkpoint(
            scan, q[:, :, window], k[:, :, window], v[:, :, window], eta[:, :, window], W,
            first_pos=pos, anchor=anchor, use_reentrant=False,
        )  # fmt: skip
        parts.append(part)
        W, anchor, pos, start = part.W, None, 0, start + n
    stats = [p.inner_loss for p in parts if p.inner_loss is not None]
    return DualResult(
        z=torch.cat([p.z for p in parts], dim=2),
        W=parts[-1].W,
        anchor=parts[-1].anchor,
        inner_loss=torch.stack(stats).sum(0) if stats else None,
    )


def ttt_linear_dual(
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
    backend: OpsBackend = "auto",
) -> tuple[Tensor, Tensor]:
    """Training / prefill path. Any T: padded internally with `eta = 0` and trimmed.

    Returns z (B, H, T, d) in q's dtype and W_next (B, H, d, d) in the state dtype."""
    args = (q, k, v, eta, W, ln_weight, ln_bias)
    if resolve_backend(backend, q.device, q.shape[-1], chunk_size) == "triton":
        return _triton(*args, chunk_size=chunk_size, eps=eps)
    result = dual_scan(*args, chunk_size=chunk_size, eps=eps, backend=backend)
    return result.z, result.W


def _triton(*args: Tensor, chunk_size: int, eps: float) -> tuple[Tensor, Tensor]:
    from .triton_dual import ttt_linear_dual_triton  # imports triton: only when chosen

    return ttt_linear_dual_triton(*args, chunk_size=chunk_size, eps=eps)
