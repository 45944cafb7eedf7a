"""The required numerical checks for the TTT-Linear ops (docs/ttt_linear.md)."""

from __future__ import annotations

import pytest
import torch

from ttt_core.ops import (
    dual_scan,
    ttt_linear_chunked_step,
    ttt_linear_dual,
    ttt_linear_online,
    ttt_linear_primal_anchored,
)

from .helpers import random_op_inputs

SHAPES = [  # (B, H, T, d, chunk)
    (2, 3, 37, 8, 5),
    (1, 2, 16, 4, 16),
    (3, 1, 7, 6, 16),
    (2, 2, 33, 8, 1),
    (1, 4, 64, 16, 16),
]


@pytest.mark.parametrize("eta_per_head", [True, False])
@pytest.mark.parametrize(("B", "H", "T", "d", "chunk"), SHAPES)
def test_dual_matches_anchored_primal_fp64(B, H, T, d, chunk, eta_per_head):
    inputs = random_op_inputs(B, H, T, d, eta_per_head=eta_per_head, seed=T * d + chunk)
    z_ref, W_ref = ttt_linear_primal_anchored(*inputs, chunk_size=chunk)
    z, W = ttt_linear_dual(*inputs, chunk_size=chunk)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(W, W_ref, rtol=0, atol=1e-10)
    assert W.dtype == torch.float64 and z.shape == (B, H, T, d)


@pytest.mark.parametrize(("B", "H", "T", "d", "chunk"), SHAPES)
def test_dual_matches_anchored_primal_fp32(B, H, T, d, chunk):
    inputs = random_op_inputs(B, H, T, d, dtype=torch.float32, seed=T + d)
    z_ref, W_ref = ttt_linear_primal_anchored(*inputs, chunk_size=chunk)
    z, W = ttt_linear_dual(*inputs, chunk_size=chunk)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W, W_ref, rtol=1e-5, atol=1e-5)
    assert W.dtype == torch.float32


def test_dual_with_chunk_one_is_the_online_step():
    inputs = random_op_inputs(2, 3, 21, 8)
    z_online, W_online = ttt_linear_online(*inputs)
    z_dual, W_dual = ttt_linear_dual(*inputs, chunk_size=1, backend="autograd")
    torch.testing.assert_close(z_dual, z_online, rtol=0, atol=1e-12)
    torch.testing.assert_close(W_dual, W_online, rtol=0, atol=1e-12)


def test_online_differs_from_chunked_dual():
    inputs = random_op_inputs(1, 2, 16, 8)
    z_online, _ = ttt_linear_online(*inputs)
    z_dual, _ = ttt_linear_dual(*inputs, chunk_size=16)
    assert (z_online - z_dual).abs().max() > 1e-3


def test_strict_causality_across_tokens():
    q, k, v, eta, W, lw, lb = random_op_inputs(1, 2, 40, 8)
    z, _ = ttt_linear_dual(q, k, v, eta, W, lw, lb, chunk_size=8)
    t = 21
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, :, t] += 1.0
    z2, _ = ttt_linear_dual(q2, k2, v2, eta, W, lw, lb, chunk_size=8)
    assert torch.equal(z[:, :, :t], z2[:, :, :t])
    assert (z[:, :, t] - z2[:, :, t]).abs().max() > 1e-3


def test_token_output_ignores_its_own_key_and_value():
    q, k, v, eta, W, lw, lb = random_op_inputs(1, 2, 16, 8)
    z, _ = ttt_linear_dual(q, k, v, eta, W, lw, lb, chunk_size=16)
    t = 9  # mid-chunk: its own update must not reach its output (strict mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t] += 1.0
    v2[:, :, t] -= 1.0
    z2, _ = ttt_linear_dual(q, k2, v2, eta, W, lw, lb, chunk_size=16)
    torch.testing.assert_close(z2[:, :, : t + 1], z[:, :, : t + 1], rtol=0, atol=1e-12)
    assert (z2[:, :, t + 1 :] - z[:, :, t + 1 :]).abs().max() > 1e-4


def test_dual_gradcheck_fp64():
    inputs = [x.detach().requires_grad_() for x in random_op_inputs(1, 2, 11, 4, seed=3)]

    def fn(*args):
        z, W = ttt_linear_dual(*args, chunk_size=4)
        return z, W

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_padding_equals_explicit_zero_eta_tokens():
    """Padding to the chunk grid is the same as appending tokens with eta = 0."""
    q, k, v, eta, W, lw, lb = random_op_inputs(2, 2, 13, 8)
    z, W_next = ttt_linear_dual(q, k, v, eta, W, lw, lb, chunk_size=8)
    extra = lambda x: torch.cat([x, torch.randn_like(x[:, :, :3])], dim=2)  # noqa: E731
    eta_pad = torch.cat([eta, torch.zeros_like(eta[:, :, :3])], dim=2)
    z_long, W_long = ttt_linear_dual(extra(q), extra(k), extra(v), eta_pad, W, lw, lb, chunk_size=8)
    torch.testing.assert_close(z_long[:, :, :13], z, rtol=0, atol=1e-12)
    torch.testing.assert_close(W_long, W_next, rtol=0, atol=1e-12)


def test_rows_are_independent():
    inputs = random_op_inputs(3, 2, 19, 8)
    z, W = ttt_linear_dual(*inputs, chunk_size=4)
    for row in range(3):
        single = [x[row : row + 1] for x in inputs[:5]] + list(inputs[5:])
        z_row, W_row = ttt_linear_dual(*single, chunk_size=4)
        torch.testing.assert_close(z_row, z[row : row + 1], rtol=0, atol=1e-12)
        torch.testing.assert_close(W_row, W[row : row + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("split", [5, 8, 11])
def test_scan_resumed_mid_chunk_equals_one_scan(split):
    """Continuing from (W, anchor) at any position reproduces the uninterrupted scan."""
    q, k, v, eta, W, lw, lb = random_op_inputs(2, 2, 29, 8)
    whole = dual_scan(q, k, v, eta, W, lw, lb, chunk_size=8)
    first = dual_scan(*(x[:, :, :split] for x in (q, k, v, eta)), W, lw, lb, chunk_size=8)
    second = dual_scan(
        *(x[:, :, split:] for x in (q, k, v, eta)),
        first.W,
        lw,
        lb,
        chunk_size=8,
        first_pos=split % 8,
        anchor=first.anchor,
    )
    torch.testing.assert_close(torch.cat([first.z, second.z], dim=2), whole.z, rtol=0, atol=1e-12)
    torch.testing.assert_close(second.W, whole.W, rtol=0, atol=1e-12)


def test_chunked_step_reproduces_dual_token_by_token():
    q, k, v, eta, W, lw, lb = random_op_inputs(2, 2, 20, 8)
    z_dual, W_dual = ttt_linear_dual(q, k, v, eta, W, lw, lb, chunk_size=8, backend="autograd")
    anchor, outputs = W, []
    for t in range(20):
        one = slice(t, t + 1)
        z_t, W = ttt_linear_chunked_step(
            q[:, :, one],
            k[:, :, one],
            v[:, :, one],
            eta[:, :, one],
            W,
            anchor,
            lw,
            lb,
            chunk_size=8,
        )
        outputs.append(z_t)
        if (t + 1) % 8 == 0:
            anchor = W
    torch.testing.assert_close(torch.cat(outputs, dim=2), z_dual, rtol=0, atol=1e-12)
    torch.testing.assert_close(W, W_dual, rtol=0, atol=1e-12)


def test_inner_loss_falls_after_each_update():
    inputs = random_op_inputs(2, 2, 32, 8, eta_scale=0.05)
    result = dual_scan(*inputs, chunk_size=8, with_inner_loss=True)
    before, after, count = result.inner_loss
    assert count == 2 * 2 * 32
    assert 0 < after < before


@pytest.mark.parametrize(
    ("index", "shape", "message"),
    [
        (1, (2, 3, 36, 8), "k must have shape"),
        (3, (2, 3), "eta must have shape"),
        (5, (3, 4), "ln_weight must have shape"),
    ],
)
def test_bad_shapes_are_named(index, shape, message):
    inputs = list(random_op_inputs(2, 3, 37, 8))
    inputs[index] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        ttt_linear_dual(*inputs, chunk_size=4)


def test_low_precision_state_is_refused():
    inputs = list(random_op_inputs(1, 1, 4, 4, dtype=torch.float32))
    inputs[4] = inputs[4].bfloat16()
    with pytest.raises(ValueError, match="W must be fp32"):
        ttt_linear_online(*inputs)


# bf16 tolerance: bf16 keeps 8 mantissa bits (relative step 2^-8 ~ 4e-3); the products W q,
# W k and Q K^T round to it, so outputs of unit scale agree to a few 1e-2. The fast weight is
# accumulated in fp32 and agrees more tightly.
BF16_ATOL_Z, BF16_ATOL_W = 5e-2, 1e-2


@pytest.mark.gpu
def test_dual_matches_primal_bf16_on_cuda():
    inputs = [x.cuda() for x in random_op_inputs(2, 4, 100, 64, dtype=torch.float32)]
    inputs = [x.bfloat16() if i in (0, 1, 2) else x for i, x in enumerate(inputs)]
    z_ref, W_ref = ttt_linear_primal_anchored(*inputs, chunk_size=16)
    z, W = ttt_linear_dual(*inputs, chunk_size=16)
    assert z.dtype == torch.bfloat16 and W.dtype == torch.float32
    torch.testing.assert_close(z.float(), z_ref.float(), rtol=0, atol=BF16_ATOL_Z)
    torch.testing.assert_close(W, W_ref, rtol=0, atol=BF16_ATOL_W)
