"""The LaCT mixer in a model, fp64: decode through the fixed-size state reproduces prefill for
every combination of momentum, Muon and low rank; the two backends agree on outputs and every
parameter's gradient; the state's size does not change with context; bad settings are refused."""

from __future__ import annotations

import itertools

import pydantic
import pytest
import torch

from ttt_core import TTTLM, ModelConfig, generate

from .helpers import LACT


def lact_model(seed: int = 0, **overrides) -> TTTLM:
    torch.manual_seed(seed)
    config = ModelConfig.from_preset("debug_tiny", mixer="lact", **{**LACT, **overrides})
    model = TTTLM(config).double().eval()
    with torch.no_grad():  # the output scale is silu(0) = 0 at init: make the TTT branch matter
        for block in model.blocks:
            block.mixer.ttt_scale_proj.bias.fill_(2.0)
    return model


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (B, T), generator=torch.Generator().manual_seed(seed))


OPTIONS = list(itertools.product([False, True], [False, True], [0, 4]))


@pytest.mark.parametrize(("momentum", "muon", "low_rank"), OPTIONS)
def test_decode_token_by_token_reproduces_prefill_in_fp64(momentum, muon, low_rank):
    model = lact_model(lact_momentum=momentum, lact_muon=muon, lact_low_rank=low_rank)
    tokens = ids(2, 29)  # 3 chunks of 8 and a partial one
    with torch.no_grad():
        prefill = model(tokens).logits
        cache, logits, sizes = model.new_cache(2), [], set()
        for t in range(tokens.shape[1]):
            out = model.decode(tokens[:, t : t + 1], cache)
            cache, _ = out.cache, logits.append(out.logits)
            sizes.add(cache.nbytes())
    torch.testing.assert_close(torch.cat(logits, 1), prefill, rtol=1e-9, atol=1e-9)
    assert len(sizes) == 1, "the state grew with context"
    state = cache.layers[0]
    assert (state.M0 is None) == (not momentum)
    # the fast weights did move: decode's updates are not a no-op
    start = model.new_cache(2).layers[0]
    assert (state.W1 - start.W1).abs().max() > 1e-3


def test_the_ttt_branch_reaches_past_the_window():
    """A token more than a window back changes later logits only through the fast weights."""
    model = lact_model()
    tokens = ids(1, 32)
    changed = tokens.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 512
    with torch.no_grad():
        gap = (model(changed).logits - model(tokens).logits)[0, 24:].abs().max()
    assert gap > 1e-6


@pytest.mark.parametrize(("momentum", "muon", "low_rank"), OPTIONS)
def test_the_backends_agree_on_outputs_and_every_gradient(momentum, muon, low_rank):
    options = dict(lact_momentum=momentum, lact_muon=muon, lact_low_rank=low_rank)
    runs = {}
    for backend in ("autograd", "fused"):
        model = lact_model(ops_backend=backend, **options).train()
        tokens = ids(2, 21)
        loss = model(tokens[:, :-1], labels=tokens[:, 1:]).loss
        loss.backward()
        runs[backend] = (loss, {n: p.grad for n, p in model.named_parameters()})
    (loss_a, grads_a), (loss_f, grads_f) = runs["autograd"], runs["fused"]
    torch.testing.assert_close(loss_f, loss_a, rtol=1e-12, atol=1e-12)
    for name, grad in grads_a.items():
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_generate_and_beam_search_style_reorder_work_from_a_lact_cache():
    model = lact_model()
    prompt = ids(2, 11)
    result = generate(model, prompt, 9)
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache, tokens = out.cache, []
        logits = out.logits[:, -1]
        for _ in range(9):
            tokens.append(logits.argmax(-1))
            out = model.decode(tokens[-1][:, None], cache)
            cache, logits = out.cache, out.logits[:, -1]
    assert torch.equal(result.tokens, torch.stack(tokens, 1))
    swapped = cache.reorder([1, 0])
    assert torch.equal(swapped.layers[0].W0[0], cache.layers[0].W0[1])


def test_bad_lact_settings_are_refused_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="lact_heads"):
        ModelConfig.from_preset("debug_tiny", mixer="lact", lact_heads=3)
    with pytest.raises(pydantic.ValidationError, match="lact_low_rank"):
        ModelConfig.from_preset("debug_tiny", mixer="lact", lact_heads=4, lact_low_rank=16)
    with pytest.raises(pydantic.ValidationError, match="no LaCT kernel"):
        ModelConfig.from_preset("debug_tiny", mixer="lact", ops_backend="triton")
    with pytest.raises(pydantic.ValidationError, match="lact_base_lr"):
        ModelConfig.from_preset("debug_tiny", mixer="lact", lact_base_lr=float("inf"))
    with pytest.raises(ValueError, match="ablation"):
        TTTLM(ModelConfig.from_preset("debug_tiny", mixer="lact")).new_cache(1, init="zeros")
    hybrid = ModelConfig.from_preset("debug_tiny", layer_mixers=("ttt_linear", "lact"))
    with pytest.raises(ValueError, match="LaCT starts from its W0"):
        TTTLM(hybrid).new_cache(1, init="zeros")
