"""TTT-E2E (ttt_core.e2e) in fp64 at model level: the inner loop against a plain forward of the
same stack, causality across chunk boundaries, decode against prefill with a flat state, the
second-order gradient against finite differences, and the settings it refuses.

The shared suites run the e2e stacks too: every cache operation and HF generate
(test_inference.py, test_hf.py, helpers.STACKS) and the model-level finite-difference check of
every parameter (test_gradients.py)."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ttt_core import TTTLM, ModelConfig
from ttt_core.cache import Cache

from .helpers import E2E
from .test_gradients import directional_derivatives

VOCAB = 64


def fp64_model(**overrides) -> TTTLM:
    """debug_tiny as TTT-E2E (helpers.E2E): chunk 4, window 8, weights large enough that the
    inner steps move the outputs."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, **{**E2E, **overrides})
    model = TTTLM(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def random_ids(B: int = 2, T: int = 19, seed: int = 1) -> torch.Tensor:
    """T=19: four full chunks of 4 and a partial one."""
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def plain_forward(model: TTTLM, ids: torch.Tensor) -> torch.Tensor:
    """The stack without its inner loop, written out: each suffix block applies its prime MLP
    as the module it is (learned weights), its attention over the whole sequence at once."""
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    x = model.embed(ids)
    for block in model.blocks:
        x = block(x, positions, None, decode=False, return_stats=False)[0]
    for block in model.suffix.blocks:
        x = x + block.mixer(block.mixer_norm(x), positions).y
        x = x + block.prime(block.prime_norm(x))
        x = x + block.mlp(block.mlp_norm(x))
    return model.lm_head(model.norm(x))


@pytest.mark.parametrize("suffix_layers", [1, 2])
def test_a_zero_inner_lr_is_the_plain_stack(suffix_layers):
    model = fp64_model(e2e_inner_lr=0.0, e2e_suffix_layers=suffix_layers)
    ids = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain_forward(model, ids), rtol=0, atol=1e-12)


def test_the_inner_steps_change_the_outputs_from_the_second_chunk_on():
    """Chunk 0 reads the learned weights in both models; every later chunk reads stepped ones."""
    ids = random_ids()
    with torch.no_grad():
        stepped = fp64_model()(ids).logits
        plain = fp64_model(e2e_inner_lr=0.0)(ids).logits
    torch.testing.assert_close(stepped[:, :4], plain[:, :4], rtol=0, atol=1e-12)
    assert (stepped[:, 4:] - plain[:, 4:]).abs().amax(dim=-1).min() > 1e-6


def test_the_inner_step_runs_under_no_grad_and_in_train_mode_alike():
    model, ids = fp64_model(), random_ids()
    with torch.no_grad():
        evaluated = model(ids).logits
    trained = model.train()(ids).logits
    torch.testing.assert_close(trained.detach(), evaluated, rtol=0, atol=1e-12)


def test_inner_lr_scale_multiplies_the_inner_lr():
    ids = random_ids()
    with torch.no_grad():
        scaled = fp64_model(e2e_inner_lr=0.5)(ids, inner_lr_scale=0.2).logits
        direct = fp64_model(e2e_inner_lr=0.1)(ids).logits
    torch.testing.assert_close(scaled, direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("position", [5, 8, 12])
def test_outputs_are_causal_across_chunk_boundaries(position):
    """Token `position` changes no output before it; 8 and 12 open a chunk, so they are the
    label of the chunk before (its inner step) and still reach nothing earlier."""
    model, ids = fp64_model(), random_ids()
    changed = ids.clone()
    changed[:, position] = (ids[:, position] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :position], b[:, :position], rtol=0, atol=1e-12)
    assert (a[:, position:] - b[:, position:]).abs().max() > 1e-6


@pytest.mark.parametrize("suffix_layers", [1, 2])
def test_token_by_token_decode_reproduces_prefill_with_a_flat_state(suffix_layers):
    model, ids = fp64_model(e2e_suffix_layers=suffix_layers), random_ids(T=23)
    with torch.no_grad():
        prefill = model(ids).logits
        cache, logits, sizes = model.new_cache(2), [], []
        for t in range(ids.shape[1]):
            out = model.decode(ids[:, t : t + 1], cache)
            cache = out.cache
            logits.append(out.logits)
            sizes.append(cache.nbytes())
    torch.testing.assert_close(torch.cat(logits, dim=1), prefill, rtol=0, atol=1e-9)
    assert len(set(sizes)) == 1, f"the state grew with context: {sizes}"


@pytest.mark.parametrize("split", [4, 7, 8])
def test_prefill_then_decode_reproduces_one_prefill(split):
    """A prefill ending on a chunk boundary (4, 8) leaves a full pending chunk whose step the
    next token takes; one ending inside a chunk (7) leaves a partial one."""
    model, ids = fp64_model(), random_ids(T=17)
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :split], use_cache=True)
        rest = model.decode(ids[:, split:], first.cache)
    torch.testing.assert_close(first.logits, whole[:, :split], rtol=0, atol=1e-9)
    torch.testing.assert_close(rest.logits, whole[:, split:], rtol=0, atol=1e-9)


def test_rows_at_different_positions_decode_as_they_would_alone():
    """Rows whose chunks complete at different tokens, decoded in one batch."""
    model = fp64_model()
    a, b = random_ids(1, 14, seed=2), random_ids(1, 11, seed=3)
    with torch.no_grad():
        ca = model(a[:, :6], use_cache=True).cache
        cb = model(b[:, :3], use_cache=True).cache
        together = model.decode(torch.cat([a[:, 6:14], b[:, 3:11]]), Cache.stack([ca, cb]))
        alone_a = model(a).logits[:, 6:14]
        alone_b = model(b).logits[:, 3:11]
    torch.testing.assert_close(together.logits[:1], alone_a, rtol=0, atol=1e-9)
    torch.testing.assert_close(together.logits[1:], alone_b, rtol=0, atol=1e-9)


def test_the_prime_gradient_through_the_inner_steps_equals_the_central_difference():
    """The outer gradient w.r.t. the prime MLPs' initial weights (their meta-learning) flows
    through every inner step: second order, each chunk recomputed in backward."""
    model = fp64_model(e2e_inner_lr=1.0).train()
    params = [p for name, p in model.named_parameters() if ".prime." in name]
    analytic, numeric = directional_derivatives(model, params, h=1e-6)
    assert abs(analytic) > 1e-4
    assert abs(analytic - numeric) <= 1e-6 * abs(analytic), (analytic, numeric)


def test_the_gradient_is_second_order(monkeypatch):
    """Dropping the inner gradient's own graph (a first-order approximation) changes the
    prime gradient: the test above would catch a loop that forgot create_graph."""
    model, ids = fp64_model(e2e_inner_lr=1.0).train(), random_ids(T=21)
    prime = model.suffix.blocks[0].prime.gate.weight

    def prime_grad():
        model.zero_grad()
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        return prime.grad.clone()

    exact = prime_grad()
    real_grad = torch.autograd.grad

    def first_order(outputs, inputs, create_graph=False, **kwargs):
        return tuple(g.detach() for g in real_grad(outputs, inputs, create_graph=True, **kwargs))

    monkeypatch.setattr(torch.autograd, "grad", first_order)
    approx = prime_grad()
    assert (exact - approx).abs().max() > 1e-6 * exact.abs().max()


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="needs mixer='swa'"):
        ModelConfig.from_preset("debug_tiny", e2e_suffix_layers=1)
    with pytest.raises(pydantic.ValidationError, match="exceeds n_layers"):
        ModelConfig.from_preset("debug_tiny", mixer="swa", e2e_suffix_layers=3)
    for field, value in [("e2e_inner_clip", 0.0), ("e2e_inner_lr", -1.0), ("e2e_chunk_size", 0)]:
        with pytest.raises(pydantic.ValidationError, match=field):
            ModelConfig.from_preset("debug_tiny", **{**E2E, field: value})
    with pytest.raises(pydantic.ValidationError, match="e2e_inner_lr"):
        ModelConfig.from_preset("debug_tiny", **{**E2E, "e2e_inner_lr": float("nan")})


def test_document_isolation_and_a_stray_inner_lr_scale_are_refused():
    model, ids = fp64_model(), random_ids()
    with pytest.raises(ValueError, match="not implemented for e2e_suffix_layers"):
        model(ids, doc_starts=ids == 0)
    plain = TTTLM(ModelConfig.from_preset("debug_tiny", mixer="swa"))
    with pytest.raises(ValueError, match="no suffix"):
        plain(ids, inner_lr_scale=0.5)


def test_presets_match_their_baselines_in_size_and_name_themselves():
    small = ModelConfig.from_preset("e2e_small_cpu")
    swa = ModelConfig.from_preset("small_cpu", mixer="swa", window_size=64)
    assert abs(small.num_params() / swa.num_params() - 1) < 1e-3
    assert small.mixer_name == "e2e"
    ref = ModelConfig.from_preset("e2e_125m")
    shape = (ref.n_layers, ref.e2e_suffix_layers, ref.e2e_chunk_size, ref.window_size)
    assert shape == (12, 3, 1024, 8192)
