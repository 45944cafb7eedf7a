"""The LaCT op family in fp64: the hand-derived chunk loop ("autograd" backend) and the manual
backward ("fused") against the reference with autograd inner gradients (`lact_naive`), on
outputs, final state and the gradients of every input, for T a multiple of the chunk, not a
multiple, and below one chunk, with and without momentum and Muon."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ttt_core.ops.lact import lact_chunked, lact_fused, lact_naive, lact_scan, resolve_backend

CHUNK = 8
IMPLEMENTATIONS = {"chunked": lact_chunked, "fused": lact_fused}


def random_inputs(T: int, momentum: bool, *, B: int = 2, H: int = 2, d: int = 6, seed: int = 0):
    """Leaf fp64 tensors shaped as the mixer makes them: unit-norm q, k; positive lr; gates in
    (0, 1); weights with the init's scale; target norms of the initial rows."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = (F.normalize(randn(B, H, T, d), dim=-1) for _ in range(2))
    v = randn(B, H, T, d)
    lr = F.softplus(randn(B, H, T, 3) - 1.0)
    gate = torch.sigmoid(randn(B, H, T)) if momentum else None
    weights = tuple(randn(B, H, d, d) / d**0.5 for _ in range(3))
    norms = tuple(w.norm(dim=-1, keepdim=True) * (1 + 0.1 * randn(B, H, d, 1)) for w in weights)
    tensors = dict(q=q, k=k, v=v, lr=lr, gate=gate)
    tensors.update({f"W{i}": w for i, w in enumerate(weights)})
    tensors.update({f"norm{i}": n for i, n in enumerate(norms)})
    return {name: t.requires_grad_() for name, t in tensors.items() if t is not None}


def run(op, inputs: dict, muon: bool, **kwargs):
    weights = tuple(inputs[f"W{i}"] for i in range(3))
    norms = tuple(inputs[f"norm{i}"] for i in range(3))
    return op(
        inputs["q"], inputs["k"], inputs["v"], inputs["lr"], inputs.get("gate"), weights, norms,
        chunk_size=CHUNK, muon=muon, **kwargs,
    )  # fmt: skip


def scalar_of(result, seed: int = 5) -> torch.Tensor:
    """A fixed random linear function of the output and the whole final state, so every
    cotangent is exercised."""
    gen = torch.Generator().manual_seed(seed)
    parts = [result.o, *result.weights, *(result.momentum or ())]
    return sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in parts)


CASES = list(itertools.product([24, 21, 5], [False, True], [False, True]))


@pytest.mark.parametrize(("T", "momentum", "muon"), CASES)
@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_outputs_state_and_every_gradient_equal_the_reference(implementation, T, momentum, muon):
    inputs = random_inputs(T, momentum)
    expected = run(lact_naive, inputs, muon)
    got = run(IMPLEMENTATIONS[implementation], inputs, muon)
    torch.testing.assert_close(got.o, expected.o, rtol=1e-9, atol=1e-10)
    for mine, theirs in zip(got.weights, expected.weights, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)
    assert (got.momentum is None) == (not momentum)
    if momentum:
        for mine, theirs in zip(got.momentum, expected.momentum, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)
    names = sorted(inputs)
    want = torch.autograd.grad(scalar_of(expected), [inputs[n] for n in names], allow_unused=True)
    have = torch.autograd.grad(scalar_of(got), [inputs[n] for n in names], allow_unused=True)
    # below one chunk nothing updates: only q and the weights reach the result
    unused = {"k", "v", "lr", "gate", "norm0", "norm1", "norm2"} if T < CHUNK else set()
    for name, mine, theirs in zip(names, have, want, strict=True):
        if name in unused:
            assert theirs is None and (mine is None or not mine.any()), name
            continue
        assert theirs.abs().max() > 0, f"the reference has no gradient for {name}"
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10, msg=name)


def test_continuing_from_a_state_equals_one_pass():
    """Two calls, the second from the first's weights and momentum, equal one call over the
    whole sequence (the first ends on a chunk boundary)."""
    inputs = random_inputs(29, momentum=True)
    whole = run(lact_fused, inputs, muon=True)
    first_half = {
        n: t[:, :, :16] if t.dim() >= 3 and t.shape[2] == 29 else t for n, t in inputs.items()
    }
    second_half = {
        n: t[:, :, 16:] if t.dim() >= 3 and t.shape[2] == 29 else t for n, t in inputs.items()
    }
    first = run(lact_fused, first_half, muon=True)
    for i in range(3):
        second_half[f"W{i}"] = first.weights[i]
    second = lact_fused(
        second_half["q"], second_half["k"], second_half["v"], second_half["lr"],
        second_half["gate"], first.weights, tuple(inputs[f"norm{i}"] for i in range(3)),
        first.momentum, chunk_size=CHUNK, muon=True,
    )  # fmt: skip
    torch.testing.assert_close(torch.cat([first.o, second.o], 2), whole.o, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(
        second.weights + second.momentum, whole.weights + whole.momentum, strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_without_state_the_outputs_and_their_gradients_are_the_same(implementation):
    inputs = random_inputs(24, momentum=True)
    full = run(IMPLEMENTATIONS[implementation], inputs, muon=True)
    lean = run(IMPLEMENTATIONS[implementation], inputs, muon=True, need_state=False)
    assert lean.weights is None and lean.momentum is None
    torch.testing.assert_close(lean.o, full.o, rtol=0, atol=0)
    names = sorted(inputs)
    (g_full,) = torch.autograd.grad(full.o.sum(), [inputs["k"]])
    (g_lean,) = torch.autograd.grad(lean.o.sum(), [inputs["k"]])
    torch.testing.assert_close(g_lean, g_full, rtol=1e-12, atol=1e-12)
    assert names  # every input was built


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_the_manual_backward_saves_far_less_than_autograd():
    inputs = random_inputs(64, momentum=True, d=16)
    graph = {
        name: saved_bytes(lambda op=op: run(op, inputs, muon=True))
        for name, op in IMPLEMENTATIONS.items()
    }
    # the inputs, plus weights and momentum buffers (6 matrices) at the start of each chunk
    B, H, T, d = inputs["q"].shape
    per_chunk_state = 6 * B * H * d * d * 8
    inputs_bytes = sum(t.numel() * 8 for t in inputs.values())
    assert graph["fused"] <= inputs_bytes + (T // CHUNK) * per_chunk_state, graph
    assert graph["fused"] < 0.3 * graph["chunked"], graph


def test_backend_names_resolve_and_triton_is_refused():
    assert resolve_backend("auto") == "fused"
    assert resolve_backend("autograd") == "autograd"
    with pytest.raises(ValueError, match="no LaCT kernel"):
        resolve_backend("triton")
    with pytest.raises(ValueError, match="unknown ops backend"):
        lact_scan(backend="cuda")
