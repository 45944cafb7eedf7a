"""The TTT-Linear op family: one signature, several implementations, compared pairwise by the tests.
The semantics they implement, and the test pinning each property: `docs/ttt_linear.md`.

- `ttt_linear_primal_anchored`: the sequential reference (materialises every W_t).
- `ttt_linear_dual` / `dual_scan`: the chunked dual form used for training and prefill, with a
  `backend` switch ("auto", "autograd", "fused", "triton"; see `backends.py`).
- `ttt_linear_online`: online GD with b = 1, used for decode.
"""

from .backends import (
    dual_scan,
    resolve_backend,
    triton_unavailable,
    ttt_linear_dual,
)
from .dual import DualResult, autograd_dual_scan
from .fused import fused_dual_scan
from .online import ttt_linear_chunked_step, ttt_linear_online
from .primal import ttt_linear_primal_anchored

__all__ = [
    "DualResult",
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
