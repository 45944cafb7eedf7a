"""Inference: both decode modes, generation, multi-turn, many users, cache surgery and files."""

from __future__ import annotations

import pytest
import torch

from ttt_core import TTTLM, KVCache, ModelConfig, TTTCache, generate
from ttt_core import mixer as mixer_module
from ttt_core.ops import ttt_linear_dual

MIXERS = ["ttt_linear", "attention"]


def tiny_model(seed: int = 0, **overrides) -> TTTLM:
    torch.manual_seed(seed)
    model = TTTLM(ModelConfig.from_preset("debug_tiny", **overrides)).eval()
    # Larger inner steps than the default make decode-mode differences easy to see.
    for block in model.blocks:
        if hasattr(block.mixer, "eta_gate"):
            torch.nn.init.normal_(block.mixer.eta_gate.weight, std=1.0)
    return model


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (B, T), generator=torch.Generator().manual_seed(seed))


def teacher_forced(model: TTTLM, ids: torch.Tensor, decode_mode: str) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0], decode_mode=decode_mode)
    logits = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            out = model.decode(ids[:, t : t + 1], cache)
            cache = out.cache
            logits.append(out.logits)
    return torch.cat(logits, dim=1)


def test_chunked_decode_reproduces_prefill():
    model = tiny_model(eta_base=0.5)
    ids = random_ids(2, 29)  # chunk 8: not a multiple
    with torch.no_grad():
        prefill = model(ids).logits
    torch.testing.assert_close(teacher_forced(model, ids, "chunked"), prefill, rtol=1e-5, atol=1e-5)


def test_online_decode_is_a_sequence_of_size_one_dual_steps(monkeypatch):
    model = tiny_model(eta_base=0.5)
    ids = random_ids(2, 20)
    online = teacher_forced(model, ids, "online")

    def dual_of_size_one(q, k, v, eta, W, ln_weight, ln_bias, *, eps):
        return ttt_linear_dual(q, k, v, eta, W, ln_weight, ln_bias, chunk_size=1, eps=eps)

    monkeypatch.setattr(mixer_module, "ttt_linear_online", dual_of_size_one)
    torch.testing.assert_close(teacher_forced(model, ids, "online"), online, rtol=0, atol=1e-6)
    with torch.no_grad():
        prefill = model(ids).logits
    # Pinned on purpose: online decode is NOT prefill (chunks of 8 vs steps of 1).
    assert (online[:, 8:] - prefill[:, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", MIXERS)
def test_multi_turn_equals_one_pass(mixer):
    model = tiny_model(mixer=mixer, eta_base=0.5)
    turn1, turn2 = random_ids(1, 16, seed=2), random_ids(1, 8, seed=3)
    first = generate(model, turn1, 8, decode_mode="chunked")  # 16 + 8 = 24: chunk aligned
    second = generate(model, turn2, 6, cache=first.cache)
    history = torch.cat([turn1, first.tokens, turn2], dim=1)
    one_pass = generate(model, history, 6, decode_mode="chunked")
    assert torch.equal(second.tokens, one_pass.tokens)
    for a, b in zip(second.cache.layers, one_pass.cache.layers, strict=True):
        for name, t in a.tensors().items():
            torch.testing.assert_close(t, b.tensors()[name], rtol=1e-5, atol=1e-5)
    assert second.cache.offsets.item() == 16 + 8 + 8 + 6
    if mixer == "ttt_linear":
        assert not torch.allclose(first.cache.layers[0].W, second.cache.layers[0].W)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("decode_mode", ["online", "chunked"])
def test_rows_in_one_batch_equal_rows_alone(mixer, decode_mode):
    model = tiny_model(mixer=mixer, eta_base=0.5)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 13, 9)]
    batch = generate(model, prompts, 7, decode_mode=decode_mode)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], 7, decode_mode=decode_mode)
        assert torch.equal(alone.tokens[0], batch.tokens[row])
        for a, b in zip(alone.cache.layers, batch.cache.select([row]).layers, strict=True):
            for name in ("W", "anchor") if mixer == "ttt_linear" else ("k", "v"):
                mine, theirs = getattr(a, name), getattr(b, name)
                if mixer == "attention":  # the batch holds padding slots: compare valid ones
                    mine, theirs = mine[:, :, a.valid[0]], theirs[:, :, b.valid[0]]
                if mine is not None:
                    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer", MIXERS)
def test_split_stack_round_trip_and_reorder(mixer):
    model = tiny_model(mixer=mixer)
    with torch.no_grad():
        cache = model(random_ids(3, 11), use_cache=True).cache
    restacked = type(cache).stack(cache.split())
    for a, b in zip(cache.layers, restacked.layers, strict=True):
        for name, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[name])
    beams = cache.reorder([2, 2, 0])
    for a, b in zip(cache.layers, beams.layers, strict=True):
        for name, t in a.tensors().items():
            assert torch.equal(b.tensors()[name], t[[2, 2, 0]])
    first = beams.layers[0].tensors()[next(iter(beams.layers[0].tensors()))]
    first[0].add_(1.0)  # reordered rows own their storage
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("mixer", MIXERS)
def test_cache_save_load_is_bit_exact(tmp_path, mixer):
    model = tiny_model(mixer=mixer)
    with torch.no_grad():
        cache = model(random_ids(2, 13), use_cache=True).cache
    cache.save(tmp_path / "cache.safetensors")
    loaded = type(cache).load(tmp_path / "cache.safetensors", model.config.model_dump())
    assert torch.equal(loaded.offsets, cache.offsets) and loaded.decode_mode == cache.decode_mode
    for a, b in zip(cache.layers, loaded.layers, strict=True):
        for name, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[name])


def test_cache_from_another_config_is_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model(random_ids(1, 4), use_cache=True).cache.save(tmp_path / "c.safetensors")
    other = ModelConfig.from_preset("debug_tiny", n_heads=2).model_dump()
    with pytest.raises(ValueError, match=r"different model config.*n_heads: cache 4 vs model 2"):
        TTTCache.load(tmp_path / "c.safetensors", other)
    with pytest.raises(
        ValueError, match=r"holds a ttt_linear cache.*KVCache loads attention caches"
    ):
        KVCache.load(tmp_path / "c.safetensors", model.config.model_dump())


def test_ttt_cache_size_is_constant_while_kv_cache_grows():
    sizes = {}
    for mixer in MIXERS:
        model = tiny_model(mixer=mixer)
        prompt = random_ids(1, 8)
        sizes[mixer] = [generate(model, prompt, n).cache.nbytes() for n in (4, 40)]
    assert sizes["ttt_linear"][0] == sizes["ttt_linear"][1]
    assert sizes["attention"][1] > sizes["attention"][0]


def test_sampling_is_reproducible_with_a_seed_and_greedy_at_zero_temperature():
    model = tiny_model()
    prompt = random_ids(2, 6)
    a = generate(model, prompt, 12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    b = generate(model, prompt, 12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    c = generate(model, prompt, 12, temperature=1.0, top_k=50, top_p=0.9, seed=8)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    greedy = generate(model, prompt, 12)
    assert torch.equal(
        generate(model, prompt, 12, temperature=1.0, top_k=1, seed=3).tokens, greedy.tokens
    )


def test_stream_yields_the_same_tokens_as_a_call():
    model = tiny_model()
    prompt = random_ids(2, 6)
    stream = generate(model, prompt, 9, stream=True)
    steps = list(stream)
    assert len(steps) == 9 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), generate(model, prompt, 9).tokens)
    assert torch.equal(stream.result.tokens, torch.stack(steps, dim=1))


def test_rows_stop_at_eos_and_keep_their_state():
    model = tiny_model()
    prompt = random_ids(2, 6)
    free = generate(model, prompt, 10)
    eos = int(free.tokens[0, 2])  # row 0 will stop at its third token
    stopped = generate(model, prompt, 10, eos_id=eos)
    n0 = int(stopped.lengths[0])
    assert n0 == int((free.tokens[0] == eos).nonzero()[0]) + 1
    assert (stopped.tokens[0, n0:] == eos).all()
    alone = generate(model, prompt[:1], n0)
    frozen = stopped.cache.select([0]).layers[0].W
    torch.testing.assert_close(frozen, alone.cache.layers[0].W, rtol=1e-4, atol=1e-5)
    assert (frozen - free.cache.select([0]).layers[0].W).abs().max() > 1e-4
    assert int(stopped.cache.offsets[0]) == 6 + n0


def test_bad_sampling_arguments_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="top_p"):
        generate(model, random_ids(1, 3), 2, temperature=1.0, top_p=1.5)
    with pytest.raises(RuntimeError, match="eval"):
        generate(model.train(), random_ids(1, 3), 2)
