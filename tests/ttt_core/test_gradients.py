"""Model-level gradients in fp64: a `.double()` model computes in fp64 end to end (no module
downcasts), and the gradient of its loss along a random parameter direction equals the central
finite difference of the loss, for every stack and ops backend. This is what lets the fast paths
of new mixers be checked through the whole model."""

from __future__ import annotations

import pytest
import torch

from ttt_core import TTTLM, ModelConfig

from .helpers import E2E, LACT

VOCAB = 64
# Larger inner steps than the default (eta_base 0.01) so the TTT path moves the loss visibly.
STACKS: dict[str, dict] = {
    "ttt_linear-autograd": dict(mixer="ttt_linear", ops_backend="autograd", eta_base=0.5),
    "ttt_linear-fused": dict(mixer="ttt_linear", ops_backend="fused", eta_base=0.5),
    "attention": dict(mixer="attention"),
    "hybrid": dict(layer_mixers=("attention", "ttt_linear"), ops_backend="fused", eta_base=0.5),
    "swa": dict(mixer="swa", window_size=8),
    "lact-autograd": dict(mixer="lact", ops_backend="autograd", **LACT),
    "lact-fused": dict(mixer="lact", ops_backend="fused", **LACT),
    # second order: the loss differentiates through every inner step, each chunk recomputed
    "e2e": E2E,
    "e2e_top": {**E2E, "e2e_suffix_layers": 1},
}


def fp64_model(stack: str) -> TTTLM:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, **STACKS[stack])
    model = TTTLM(config).double()
    with torch.no_grad():  # weights large enough that every sublayer matters to the loss
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def batch(T: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    """B=2 rows; T=21 is two full chunks of 8 and a partial one."""
    ids = torch.randint(0, VOCAB, (2, T + 1), generator=torch.Generator().manual_seed(1))
    return ids[:, :-1], ids[:, 1:]


def directional_derivatives(model: TTTLM, params: list[torch.nn.Parameter], h: float = 1e-5):
    """(analytic, central finite difference) of the loss along a random unit direction in the
    space of `params`."""
    inputs, labels = batch()
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in direction))
    direction = [u / norm for u in direction]
    loss = model(inputs, labels=labels).loss
    grads = torch.autograd.grad(loss, params)
    analytic = sum((g * u).sum() for g, u in zip(grads, direction, strict=True)).item()
    losses = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, u in zip(params, direction, strict=True):
                p.add_(sign * h * u)
            losses.append(model(inputs, labels=labels).loss.item())
            for p, u in zip(params, direction, strict=True):
                p.sub_(sign * h * u)
    return analytic, (losses[0] - losses[1]) / (2 * h)


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_a_double_model_computes_in_fp64_everywhere(stack):
    model = fp64_model(stack)
    seen = []

    def record(module, args, output):
        tensors = output if isinstance(output, tuple) else (output,)
        seen.extend((type(module).__name__, t.dtype) for t in tensors if torch.is_tensor(t))

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    inputs, labels = batch()
    out = model(inputs, labels=labels)
    for hook in hooks:
        hook.remove()
    downcast = sorted(
        {name for name, dtype in seen if dtype.is_floating_point and dtype != torch.float64}
    )
    assert not downcast, f"modules returning less than fp64: {downcast}"
    assert out.logits.dtype == out.loss.dtype == torch.float64


@pytest.mark.parametrize("subset", ["all", "mixers"])
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_gradient_along_a_random_direction_equals_the_central_difference(stack, subset):
    """`mixers`: the direction moves only the token mixers' parameters, so their gradient is
    not drowned by the embeddings' and MLPs'."""
    model = fp64_model(stack)
    params = [p for name, p in model.named_parameters() if subset == "all" or ".mixer." in name]
    assert params
    analytic, numeric = directional_derivatives(model, params)
    assert abs(analytic) > 1e-4, "the direction barely moves the loss: the check would be vacuous"
    assert abs(analytic - numeric) <= 1e-6 * abs(analytic), (analytic, numeric)
