"""The dual-form backends (`autograd`, `fused`; `triton` in test_triton_dual.py) against the
anchored primal reference: outputs, end state and every input gradient; the backend switch."""

from __future__ import annotations

import pytest
import torch

from ttt_core import TTTLM, ModelConfig
from ttt_core.ops import (
    autograd_dual_scan,
    dual_scan,
    fused_dual_scan,
    resolve_backend,
    ttt_linear_dual,
    ttt_linear_primal_anchored,
)
from ttt_core.ops.ttt_linear.common import inner_grad

from .helpers import random_op_inputs

SHAPES = [  # (B, H, T, d, chunk): T a multiple of b, not a multiple, shorter than one chunk
    (2, 3, 37, 8, 5),
    (1, 2, 32, 4, 16),
    (3, 1, 7, 6, 16),
    (2, 2, 33, 8, 1),
    (1, 2, 50, 16, 16),
]
INPUT_NAMES = ("q", "k", "v", "eta", "W", "ln_weight", "ln_bias")


def _value_and_grads(fn, inputs, seed: int) -> list[torch.Tensor]:
    """[z, W_next, d/d(each input)] of `sum(z * Cz) + sum(W_next * CW)` for random cotangents."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    z, W_next = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    cz = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(z.dtype)
    cw = torch.randn(W_next.shape, generator=gen, dtype=torch.float64).to(W_next.dtype)
    grads = torch.autograd.grad((z * cz).sum() + (W_next * cw).sum(), leaves)
    return [z.detach(), W_next.detach(), *grads]


def _assert_all_close(got, want, names, atol: float, rtol: float = 0.0) -> None:
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["autograd", "fused"])
@pytest.mark.parametrize("eta_per_head", [True, False])
@pytest.mark.parametrize(("B", "H", "T", "d", "chunk"), SHAPES)
def test_backend_matches_primal_values_and_gradients_fp64(backend, B, H, T, d, chunk, eta_per_head):
    seed = 7 * T + d + chunk
    inputs = random_op_inputs(B, H, T, d, eta_per_head=eta_per_head, seed=seed)
    want = _value_and_grads(
        lambda *x: ttt_linear_primal_anchored(*x, chunk_size=chunk), inputs, seed
    )
    got = _value_and_grads(
        lambda *x: ttt_linear_dual(*x, chunk_size=chunk, backend=backend), inputs, seed
    )
    _assert_all_close(got, want, ("z", "W_next", *INPUT_NAMES), atol=1e-10)


def test_fused_matches_primal_fp32():
    inputs = random_op_inputs(2, 4, 45, 16, dtype=torch.float32, seed=11)
    want = _value_and_grads(lambda *x: ttt_linear_primal_anchored(*x, chunk_size=16), inputs, 3)
    got = _value_and_grads(
        lambda *x: ttt_linear_dual(*x, chunk_size=16, backend="fused"), inputs, 3
    )
    _assert_all_close(got, want, ("z", "W_next", *INPUT_NAMES), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("first_pos", [3, 7])
def test_fused_mid_chunk_scan_matches_autograd_including_anchor_gradients(first_pos):
    """Starting inside a chunk (decode-time prefill): z, W, the returned anchor and the
    gradients of every input, the given anchor included, equal the autograd loop's."""
    q, k, v, eta, W, lw, lb = random_op_inputs(2, 2, 21, 8, seed=first_pos)
    anchor = W + 0.05 * torch.randn(
        W.shape, generator=torch.Generator().manual_seed(1), dtype=W.dtype
    )
    inputs = [q, k, v, eta, W, anchor, lw, lb]
    gen = torch.Generator().manual_seed(5)
    cot = [torch.randn(s, generator=gen, dtype=torch.float64) for s in (q.shape, W.shape, W.shape)]

    def run(scan):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        q_, k_, v_, eta_, W_, anchor_, lw_, lb_ = leaves
        r = scan(q_, k_, v_, eta_, W_, lw_, lb_, chunk_size=8, first_pos=first_pos, anchor=anchor_)
        loss = (r.z * cot[0]).sum() + (r.W * cot[1]).sum() + (r.anchor * cot[2]).sum()
        return [r.z, r.W, r.anchor, *torch.autograd.grad(loss, leaves)]

    names = ("z", "W", "anchor", "q", "k", "v", "eta", "W_in", "anchor_in", "lw", "lb")
    _assert_all_close(run(fused_dual_scan), run(autograd_dual_scan), names, atol=1e-10)


def test_fused_function_passes_gradcheck_fp64():
    q, k, v, eta, W, lw, lb = random_op_inputs(1, 2, 11, 4, seed=3)
    anchor = W + 0.1
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, eta, W, anchor, lw, lb)]

    def fn(q, k, v, eta, W, anchor, lw, lb):
        r = fused_dual_scan(q, k, v, eta, W, lw, lb, chunk_size=4, first_pos=2, anchor=anchor)
        return r.z, r.W, r.anchor

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_inner_grad_equals_autograd_of_the_chunk_mean_inner_loss():
    """Independent of every op: the analytic inner gradient g_s k_s^T summed over a chunk is
    autograd's gradient of mean_s ||k_s + LN(W k_s) - v_s||^2 (the spec's 2/b scale)."""
    _, k, v, _, W, lw, lb = random_op_inputs(2, 3, 16, 8, seed=9)
    W = W.clone().requires_grad_()
    u = k @ W.transpose(-1, -2)
    mu, var = u.mean(-1, keepdim=True), u.var(-1, unbiased=False, keepdim=True)
    f = k + (u - mu) / torch.sqrt(var + 1e-6) * lw[:, None] + lb[:, None]
    loss = (f - v).pow(2).sum(-1).mean(-1).sum()  # mean over the chunk's 16 tokens
    (want,) = torch.autograd.grad(loss, W)
    g, _ = inner_grad(k, v, W.detach(), lw, lb, 1e-6, scale=2.0 / 16)
    torch.testing.assert_close(g.transpose(-1, -2) @ k, want, atol=1e-12, rtol=0)


def test_backends_agree_on_inner_loss_statistics():
    inputs = random_op_inputs(2, 2, 30, 8, eta_scale=0.05, seed=4)
    ref = autograd_dual_scan(*inputs, chunk_size=8, with_inner_loss=True).inner_loss
    got = fused_dual_scan(*inputs, chunk_size=8, with_inner_loss=True).inner_loss
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)


def _train_losses(config: ModelConfig, dtype: torch.dtype, steps: int = 5) -> list[float]:
    torch.manual_seed(0)
    model = TTTLM(config).to(dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, 25), generator=gen)  # 24 tokens: not 16-aligned
    losses = []
    for _ in range(steps):
        loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_model_trains_identically_with_fused_and_autograd(dtype, atol):
    """small_cpu's shape (width 256, 4 layers, 4 heads of 64, b = 16; small vocabulary)."""
    config = ModelConfig.from_preset("small_cpu", vocab_size=256)
    ref = _train_losses(config.model_copy(update={"ops_backend": "autograd"}), dtype)
    fused = _train_losses(config.model_copy(update={"ops_backend": "fused"}), dtype)
    assert ref == pytest.approx(fused, abs=atol, rel=0)
    assert ref[-1] < ref[0]


@pytest.mark.parametrize("n_chunks", [1, 2, 3])
def test_fused_checkpointing_through_time_is_bitwise_invisible(n_chunks):
    """The fused backend stores every n-th chunk's weight and replays the others exactly, so a
    run resumed with another checkpoint_n_chunks continues bit for bit."""
    config = ModelConfig.from_preset("debug_tiny", ops_backend="fused")
    plain = _train_losses(config, torch.float32, steps=3)
    update = {"checkpoint_n_chunks": n_chunks}
    assert _train_losses(config.model_copy(update=update), torch.float32, steps=3) == plain


def test_auto_is_fused_on_cpu_and_names_are_checked():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, 64, 16) == "fused"
    assert resolve_backend("autograd", cpu, 64, 16) == "autograd"
    with pytest.raises(ValueError, match="unknown ops backend 'cuda'"):
        resolve_backend("cuda", cpu, 64, 16)


def test_triton_where_it_cannot_run_is_refused_naming_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = random_op_inputs(1, 1, 16, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"ops backend .triton. cannot run here: .+"):
        dual_scan(*inputs, chunk_size=16, backend="triton")


def test_model_config_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="ops_backend"):
        ModelConfig.from_preset("debug_tiny", ops_backend="cuda")
