"""What the LaCT implementations share: the result type and the Newton-Schulz coefficients.

Shapes (every implementation): q, k, v (B, H, T, d) with H the fast-weight heads; lr (B, H, T, 3),
the per-token inner learning rates of W0, W1, W2 (in that order); momentum (B, H, T), the per-token
momentum gate, or None without momentum; weights (W0, W1, W2), each (B, H, d, d) (W0, W2: inner x
in, W1: out x inner); norms, the target row norms (B or 1, H, d, 1) each; momentum buffers, like
the weights.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

# Per-step (a, b, c) of the quintic Newton-Schulz iteration (docs/lact.md, "Muon").
NEWTON_SCHULZ_STEPS: tuple[tuple[float, float, float], ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
NS_EPS = 1e-7  # added to the Frobenius norm before Newton-Schulz
RENORM_EPS = 1e-5  # added to a row norm before rescaling to the target norm

Weights = tuple[Tensor, Tensor, Tensor]


class LactResult(NamedTuple):
    """o (B, H, T, d): the fast-weight output of every token (each read the weights of the chunks
    before its own). weights / momentum: after every complete chunk's update, when asked for
    (`need_state`), else None; momentum is None without momentum."""

    o: Tensor
    weights: Weights | None
    momentum: Weights | None
