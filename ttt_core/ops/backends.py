"""The `ops_backend` switch every op family shares: one name per implementation.

- "autograd": the family's plain chunked implementation, differentiated by autograd;
- "fused": the same math with a hand-written backward (less memory: it saves what it needs
  and recomputes the rest);
- "triton": Triton kernels (TTT-Linear only, CUDA or TRITON_INTERPRET=1);
- "auto": the fastest that can run here.

Each family resolves the name for its inputs (`ttt_linear.resolve_backend`,
`lact.resolve_backend`) and refuses, naming why, a backend it does not have or that cannot run
here: an explicit request is never silently replaced by another.
"""

from __future__ import annotations

from typing import Literal, get_args

OpsBackend = Literal["auto", "autograd", "fused", "triton"]
OPS_BACKENDS: tuple[str, ...] = get_args(OpsBackend)
