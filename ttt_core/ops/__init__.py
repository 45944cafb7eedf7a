"""The math of the token mixers, as functions on tensors: one subpackage per op family, each
with a slow obvious reference, a chunked implementation and a fused one under one signature,
compared pairwise by the tests (`tests/ttt_core/test_ops.py`, `test_lact_ops.py`, ...).

- `ttt_linear/`: TTT-Linear (anchored primal reference, dual form, fused backward, Triton
  kernels, online decode steps); semantics in `docs/ttt_linear.md`.
- `backends.py`: the `ops_backend` names every family resolves.
"""

from .backends import OPS_BACKENDS, OpsBackend
from .ttt_linear import (
    DualResult,
    autograd_dual_scan,
    dual_scan,
    fused_dual_scan,
    resolve_backend,
    triton_unavailable,
    ttt_linear_chunked_step,
    ttt_linear_dual,
    ttt_linear_online,
    ttt_linear_primal_anchored,
)

__all__ = [
    "OPS_BACKENDS",
    "DualResult",
    "OpsBackend",
    "autograd_dual_scan",
    "dual_scan",
    "fused_dual_scan",
    "resolve_backend",
    "triton_unavailable",
    "ttt_linear_chunked_step",
    "ttt_linear_dual",
    "ttt_linear_online",
    "ttt_linear_primal_anchored",
]
