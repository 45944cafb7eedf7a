"""flash-linear-attention's TTT-Linear as a benchmark competitor, at our shapes and layout.

It is a close cousin, not the same op, so timings compare like with like but outputs differ:
FLA follows the paper's reference code — each token's output also sees its own update (an
inclusive causal mask), the chunk's update uses the last token's eta, the inner gradient has no
2/b mean scale, the fast weight carries a bias state, and the output is `u + LN(u)` for
`u = W q` (ours: `q + LN(W q)`). Shapes and cost per token are the
same: (d, d) state per head, chunks of b tokens. We pass scale=1 (no 1/sqrt(d) on q) and W^T as
its initial state (FLA's state acts as `k @ h`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

SEMANTICS_NOTE = (
    "FLA TTT-Linear differs in semantics (inclusive mask, last-token eta per chunk, no 2/b "
    "scale, bias state, output W q + LN(W q)): same shapes and cost, different outputs"
)


def fla_unavailable() -> str | None:
    """None when flash-linear-attention's TTT ops import, else why not (one line)."""
    try:
        import fla.ops.ttt  # noqa: F401
    except ImportError as e:
        return f"flash-linear-attention is not importable ({e}); pip install -e '.[fla]'"
    return None


def fla_ttt_linear(device: torch.device, chunk: int, eps: float) -> tuple[str, Callable]:
    """(label, op): FLA's Triton `chunk_ttt_linear` on CUDA, its pure-torch reference elsewhere;
    the op takes our 7 inputs (q, k, v (B, H, T, d), eta (B, H, T), W, ln_weight, ln_bias) and
    returns (z (B, H, T, d), W_next (B, H, d, d))."""
    if device.type == "cuda":
        from fla.ops.ttt import chunk_ttt_linear as fla_op

        label = "fla_chunk"
    else:
        from fla.ops.ttt.naive import chunk_ttt_linear_ref as fla_op

        label = "fla_naive"

    def run(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, W: Tensor, lw: Tensor, lb: Tensor):
        # FLA's layout is (B, T, H, d); its reference scales q in place, so it gets a copy.
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        qt = qt.clone() if label == "fla_naive" else qt
        o, h, _ = fla_op(
            qt, kt, vt, lw, lb, eta.transpose(1, 2)[..., None].to(q.dtype),
            scale=1.0, eps=eps, initial_state=W.transpose(-1, -2).contiguous(),
            output_final_state=True, **{"chunk_size" if label == "fla_chunk" else "mini_batch_size": chunk},
        )  # fmt: skip
        return o.transpose(1, 2), h.transpose(-1, -2)

    return label, run
