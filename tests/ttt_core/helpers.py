"""Random inputs for the TTT-Linear ops, seeded, in the ops' argument order."""

from __future__ import annotations

import torch


def random_op_inputs(
    B: int = 2,
    H: int = 3,
    T: int = 37,
    d: int = 8,
    *,
    dtype: torch.dtype = torch.float64,
    eta_per_head: bool = True,
    seed: int = 0,
    eta_scale: float = 0.5,
) -> tuple[torch.Tensor, ...]:
    """(q, k, v, eta, W, ln_weight, ln_bias); W is fp64 when dtype is fp64, else fp32."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = (randn(B, H, T, d).to(dtype) for _ in range(3))
    eta_heads = H if eta_per_head else 1
    eta = eta_scale * torch.rand(B, eta_heads, T, generator=gen, dtype=torch.float64)
    eta = eta.expand(B, H, T).to(dtype)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    W = (0.1 * randn(B, H, d, d)).to(state_dtype)
    ln_weight = (1 + 0.1 * randn(H, d)).to(dtype)
    ln_bias = (0.1 * randn(H, d)).to(dtype)
    return q, k, v, eta, W, ln_weight, ln_bias


# LaCT on debug_tiny: 2 fast-weight heads of 32, every option on, inner lr large enough to matter.
LACT = dict(
    lact_heads=2,
    lact_chunk_size=8,
    window_size=8,
    lact_base_lr=0.2,
    lact_momentum=True,
    lact_muon=True,
    lact_low_rank=4,
)

# TTT-E2E on debug_tiny: both layers a suffix (one prime MLP each), window 8, chunk 4 so the
# tests' lengths span several inner steps; an inner lr large enough to matter.
E2E = dict(
    mixer="swa",
    window_size=8,
    e2e_suffix_layers=2,
    e2e_chunk_size=4,
    e2e_prime_hidden=32,
    e2e_inner_lr=0.5,
)

# Model overrides for every kind of stack the model builds: the pure mixers and a hybrid.
STACKS: dict[str, dict] = {
    "ttt_linear": dict(mixer="ttt_linear"),
    "attention": dict(mixer="attention"),
    "none": dict(mixer="none"),
    "hybrid": dict(layer_mixers=("attention", "ttt_linear")),
    # window and chunk 8 (debug_tiny's TTT chunk): the tests' lengths span several of each
    "swa": dict(mixer="swa", window_size=8),
    "lact": dict(mixer="lact", **LACT),
    "lact_hybrid": dict(layer_mixers=("swa", "lact"), **LACT),
    "e2e": E2E,
    # a prefix block under one suffix block
    "e2e_top": {**E2E, "e2e_suffix_layers": 1},
}
