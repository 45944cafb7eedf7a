"""The LaCT op family (docs/lact.md): one signature (`common`), three implementations compared
pairwise by `tests/ttt_core/test_lact_ops.py`.

- `lact_naive`: the reference, inner gradients by autograd, matrix by matrix;
- `lact_chunked`: batched matmuls with hand-derived inner gradients ("autograd" backend);
- `lact_fused`: the same with a hand-written backward ("fused");
- `lact_scan`: the `backend=` switch between the last two.
"""

from .backends import lact_scan, resolve_backend
from .chunk import chunk_step, lact_chunked, swiglu_apply
from .common import LactResult
from .fused import lact_fused
from .naive import lact_naive

__all__ = [
    "LactResult",
    "chunk_step",
    "lact_chunked",
    "lact_fused",
    "lact_naive",
    "lact_scan",
    "resolve_backend",
    "swiglu_apply",
]
