"""TTT-Linear ops: one signature, several implementations, compared pairwise by the tests.
The semantics they implement, and the test pinning each property: `docs/ttt_linear.md`.

- `ttt_linear_primal_anchored`: the sequential reference (materialises every W_t).
- `ttt_linear_dual`: the chunked dual form used for training and prefill.
- `ttt_linear_online`: online GD with b = 1, used for decode.
"""

from .dual import DualResult, dual_scan, ttt_linear_dual
from .online import ttt_linear_chunked_step, ttt_linear_online
from .primal import ttt_linear_primal_anchored

__all__ = [
    "DualResult",
    "dual_scan",
    "ttt_linear_chunked_step",
    "ttt_linear_dual",
    "ttt_linear_online",
    "ttt_linear_primal_anchored",
]
