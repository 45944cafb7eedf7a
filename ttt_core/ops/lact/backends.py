"""One entry point for LaCT's chunked fast-weight update, several implementations (`backend=`,
the names of `ttt_core.ops.backends`):

- "autograd": `chunk.lact_chunked`, the chunk loop differentiated by autograd;
- "fused": `fused.lact_fused`, the same loop with a hand-written backward that saves the fast
  weights per chunk and recomputes one chunk at a time (less memory);
- "auto": fused (docs/lact.md, "Benchmarks", for its speed and memory against autograd).
LaCT has no Triton kernel: "triton" is refused.
"""

from __future__ import annotations

from ..backends import OPS_BACKENDS, OpsBackend
from .chunk import lact_chunked
from .fused import lact_fused

IMPLEMENTATIONS = {"autograd": lact_chunked, "fused": lact_fused}


def resolve_backend(backend: str) -> str:
    """The concrete implementation ("autograd" or "fused") `backend` names; ValueError for a
    name that is unknown or that LaCT does not have."""
    if backend not in OPS_BACKENDS:
        raise ValueError(f"unknown ops backend {backend!r}; choose one of {list(OPS_BACKENDS)}")
    if backend == "triton":
        raise ValueError(
            "ops backend 'triton' has no LaCT kernel; use 'fused' (manual backward), 'autograd' "
            "or 'auto'"
        )
    return "fused" if backend == "auto" else backend


def lact_scan(*args, backend: OpsBackend = "auto", **kwargs):
    """`lact_chunked(*args, **kwargs)` on the implementation `backend` resolves to."""
    return IMPLEMENTATIONS[resolve_backend(backend)](*args, **kwargs)
