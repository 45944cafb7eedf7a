"""The Triton dual kernels against the anchored primal reference: outputs, W_next and every input
gradient (reference gradients by autograd through the primal form in fp64).

Without CUDA the kernels run in triton's CPU interpreter: the kernels module is imported afresh
under TRITON_INTERPRET=1 for this module only (the variable and the previously imported module are
restored afterwards, so other test modules see what they saw before).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

import pytest
import torch

import ttt_core.ops as ops_package
from ttt_core import TTTLM, ModelConfig
from ttt_core.ops import ttt_linear_dual, ttt_linear_primal_anchored
from ttt_core.ops.ttt_linear.triton_dual import (
    KERNELS_MODULE,
    launch_options,
    triton_unavailable_reason,
    ttt_linear_dual_triton,
)

from .helpers import random_op_inputs

pytest.importorskip("triton", reason="triton is not installed (pip install -e .[triton])")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CPU = torch.device("cpu")
KERNELS_ATTR = KERNELS_MODULE.rsplit(".", 1)[1]


@contextlib.contextmanager
def kernels_imported_with(env: dict[str, str | None]) -> Iterator[None]:
    """Import the kernels module afresh with `env` set ({name: None} unsets), for the block only."""
    saved_env = {name: os.environ.get(name) for name in env}
    saved_module = sys.modules.pop(KERNELS_MODULE, None)
    _set_env(env)
    try:
        importlib.import_module(KERNELS_MODULE)
    except ImportError:
        pass  # the block asks triton_unavailable_reason, which imports again and reports it
    finally:
        _set_env(saved_env)
    try:
        yield
    finally:
        sys.modules.pop(KERNELS_MODULE, None)
        if saved_module is None:
            vars(ops_package).pop(KERNELS_ATTR, None)
        else:
            sys.modules[KERNELS_MODULE] = saved_module
            setattr(ops_package, KERNELS_ATTR, saved_module)


def _set_env(env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module", autouse=True)
def runnable_kernels() -> Iterator[None]:
    """Kernels that can run on DEVICE: compiled on CUDA, interpreted on CPU."""
    if DEVICE.type == "cuda":
        yield
        return
    with kernels_imported_with({"TRITON_INTERPRET": "1"}):
        yield


def _on_device(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [x.to(DEVICE) for x in inputs]


SHAPES = [  # (B, H, T, d, chunk, eta_per_head): T not a multiple of the chunk in most
    (1, 2, 37, 16, 16, True),
    (2, 3, 20, 16, 16, False),
    (2, 1, 33, 32, 16, True),
    (1, 1, 40, 64, 16, False),
    (1, 2, 50, 16, 32, True),
    (1, 1, 16, 128, 16, True),
    (2, 2, 7, 16, 16, False),  # shorter than one chunk
]


@pytest.mark.parametrize(("B", "H", "T", "d", "chunk", "eta_per_head"), SHAPES)
def test_forward_matches_anchored_primal_fp32(B, H, T, d, chunk, eta_per_head):
    inputs = random_op_inputs(
        B, H, T, d, dtype=torch.float32, eta_per_head=eta_per_head, seed=T + d
    )
    z_ref, W_ref = ttt_linear_primal_anchored(*inputs, chunk_size=chunk)
    with torch.no_grad():  # the path that stores no anchors
        z, W_next = ttt_linear_dual_triton(*_on_device(inputs), chunk_size=chunk)
    assert z.dtype == torch.float32 and W_next.dtype == torch.float32 and z.shape == (B, H, T, d)
    torch.testing.assert_close(z.cpu(), z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W_next.cpu(), W_ref, rtol=1e-5, atol=1e-5)


def _loss_and_grads(op, inputs, grad_z, grad_W, chunk):
    """z, W_next and the gradients of <z, grad_z> + <W_next, grad_W> w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    z, W_next = op(*leaves, chunk_size=chunk)
    loss = (z * grad_z.to(z)).sum() + (W_next * grad_W.to(W_next)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return z.detach(), W_next.detach(), grads


NAMES = ("q", "k", "v", "eta", "W", "ln_weight", "ln_bias")


@pytest.mark.parametrize(("B", "H", "T", "d", "chunk", "eta_per_head"), SHAPES)
def test_gradients_match_primal_autograd_fp64(B, H, T, d, chunk, eta_per_head):
    inputs = random_op_inputs(
        B, H, T, d, dtype=torch.float32, eta_per_head=eta_per_head, seed=3 * T + d
    )
    gen = torch.Generator().manual_seed(T)
    grad_z = torch.randn(B, H, T, d, generator=gen, dtype=torch.float64)
    grad_W = torch.randn(B, H, d, d, generator=gen, dtype=torch.float64)
    reference = [x.double() for x in inputs]
    z_ref, W_ref, grads_ref = _loss_and_grads(
        ttt_linear_primal_anchored, reference, grad_z, grad_W, chunk
    )
    z, W_next, grads = _loss_and_grads(
        ttt_linear_dual_triton, _on_device(inputs), grad_z, grad_W, chunk
    )
    torch.testing.assert_close(z.cpu().double(), z_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(W_next.cpu().double(), W_ref, rtol=1e-4, atol=1e-4)
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(
            grad.cpu().double(), grad_ref, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_bf16_inputs_match_fp64_reference_within_bf16_precision():
    """bf16 rounds z, the gradients and W (for the W q, W k products) to 8 significant bits, so
    the bound is 2 % of each tensor's largest reference entry (measured: up to 0.7 %)."""
    B, H, T, d, chunk = 1, 2, 33, 32, 16
    inputs = random_op_inputs(B, H, T, d, dtype=torch.bfloat16, seed=5)
    gen = torch.Generator().manual_seed(6)
    grad_z = torch.randn(B, H, T, d, generator=gen, dtype=torch.float64)
    grad_W = torch.randn(B, H, d, d, generator=gen, dtype=torch.float64)
    reference = [x.double() for x in inputs]
    z_ref, W_ref, grads_ref = _loss_and_grads(
        ttt_linear_primal_anchored, reference, grad_z, grad_W, chunk
    )
    z, W_next, grads = _loss_and_grads(
        ttt_linear_dual_triton, _on_device(inputs), grad_z, grad_W, chunk
    )
    assert z.dtype == torch.bfloat16 and W_next.dtype == torch.float32
    pairs = [("z", z, z_ref), ("W_next", W_next, W_ref), *zip(NAMES, grads, grads_ref, strict=True)]
    for name, got, ref in pairs:
        error = (got.cpu().double() - ref).abs().max().item()
        assert error <= 2e-2 * ref.abs().max().item(), f"{name}: max error {error}"


def test_the_backend_switch_runs_the_kernels_and_agrees_with_fused():
    inputs = _on_device(random_op_inputs(1, 2, 32, 16, dtype=torch.float32, seed=2))
    z, W_next = ttt_linear_dual(*inputs, chunk_size=16, backend="triton")
    z_ref, W_ref = ttt_linear_dual(*inputs, chunk_size=16, backend="fused")
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W_next, W_ref, rtol=1e-5, atol=1e-5)


def test_a_model_with_ops_backend_triton_trains_like_fused():
    """One training step of a debug-sized TTTLM (heads of 16, chunks of 16) per backend: the same
    loss and the same gradient of every parameter."""
    config = ModelConfig.from_preset("debug_tiny", chunk_size=16)
    ids = torch.randint(0, config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("fused", "triton"):
        torch.manual_seed(0)
        model = TTTLM(config.model_copy(update={"ops_backend": backend})).to(DEVICE).train()
        batch = ids.to(DEVICE)
        loss = model(batch[:, :-1], labels=batch[:, 1:]).loss
        loss.backward()
        grads[backend] = [loss.detach()] + [p.grad for p in model.parameters()]
    for got, want in zip(grads["triton"], grads["fused"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_refuses_unsupported_shapes_and_dtypes():
    assert triton_unavailable_reason(DEVICE, 64, 16) is None
    assert "head_dim 48" in triton_unavailable_reason(DEVICE, 48, 16)
    assert "head_dim 8" in triton_unavailable_reason(DEVICE, 8, 16)
    assert "head_dim 256" in triton_unavailable_reason(DEVICE, 256, 16)
    assert "chunk_size 8" in triton_unavailable_reason(DEVICE, 64, 8)
    assert "chunk_size 24" in triton_unavailable_reason(DEVICE, 64, 24)
    inputs = _on_device(random_op_inputs(1, 1, 16, 16, dtype=torch.float32))
    with pytest.raises(ValueError, match="chunk_size 12 unsupported"):
        ttt_linear_dual_triton(*inputs, chunk_size=12)
    q, k, v, eta, W, ln_weight, ln_bias = inputs
    with pytest.raises(ValueError, match="q, k, v must share one dtype"):
        ttt_linear_dual_triton(
            q.half(), k.half(), v.half(), eta, W, ln_weight, ln_bias, chunk_size=16
        )
    with pytest.raises(ValueError, match="W must be fp32"):
        ttt_linear_dual_triton(q, k, v, eta, W.double(), ln_weight, ln_bias, chunk_size=16)


def test_refuses_cpu_tensors_when_kernels_are_compiled():
    with kernels_imported_with({"TRITON_INTERPRET": None}):
        reason = triton_unavailable_reason(CPU, 64, 16)
        assert reason is not None and "TRITON_INTERPRET=1" in reason
        with pytest.raises(ValueError, match="backend triton: tensors are on cpu"):
            ttt_linear_dual_triton(
                *random_op_inputs(1, 1, 16, 16, dtype=torch.float32), chunk_size=16
            )


def test_refuses_when_triton_is_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    with kernels_imported_with({}):
        reason = triton_unavailable_reason(DEVICE, 64, 16)
    assert reason is not None and reason.startswith("triton is not importable")


H100_SHARED_MEMORY_PER_BLOCK = 227 * 1024
ACTIVATION_POINTERS = {"q_ptr", "k_ptr", "v_ptr", "z_ptr", "dz_ptr", "dq_ptr", "dk_ptr", "dv_ptr"}


def _signature(kernel, activation: str, constexprs: dict[str, object]) -> dict[str, str]:
    """Argument types of one launch: activations in `activation`, the rest fp32, counts int32."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + (activation if name in ACTIVATION_POINTERS else "fp32")
        else:
            signature[name] = "i32" if name in ("n_chunks", "H") else "fp32"
    return signature


@pytest.mark.slow
def test_kernels_compile_for_h100_at_the_production_shape():
    """No GPU needed: compile both kernels for sm_90 at d = 128, b = 16, bf16 (what the model runs
    on GPU), and check that they fit the shared memory of one H100 block."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton build has no NVIDIA backend")
    with kernels_imported_with({"TRITON_INTERPRET": None}):
        kernels = importlib.import_module(KERNELS_MODULE)
        options = launch_options(False, torch.bfloat16, 128)
        compile_options = {key: options.pop(key) for key in list(options) if key.islower()}
        for kernel, extra in [
            (kernels.dual_forward_kernel, {"STORE_ANCHORS": True}),
            (kernels.dual_backward_kernel, {}),
        ]:
            constexprs = {"D": 128, "BLOCK": 16, **options, **extra}
            source = ASTSource(
                fn=kernel,
                signature=_signature(kernel, "bf16", constexprs),
                constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
            )
            compiled = triton.compile(
                source, target=GPUTarget("cuda", 90, 32), options=compile_options
            )
            assert compiled.metadata.shared <= H100_SHARED_MEMORY_PER_BLOCK, kernel.__name__
