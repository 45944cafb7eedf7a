"""Inference: both decode modes, generation, multi-turn, many users, cache surgery and files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ttt_core import TTTLM, Cache, KVCache, ModelConfig, TTTCache, generate
from ttt_core.mixers import ttt_linear as mixer_module
from ttt_core.ops import ttt_linear_dual

from .helpers import STACKS

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


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_chunked_decode_reproduces_prefill(stack):
    model = tiny_model(eta_base=0.5, **STACKS[stack])
    ids = random_ids(2, 29)  # chunk 8: not a multiple
    with torch.no_grad():
        prefill = model(ids).logits
    torch.testing.assert_close(teacher_forced(model, ids, "chunked"), prefill, rtol=1e-5, atol=1e-5)


def test_attention_decode_equals_prefill_in_fp64():
    """Token by token through the preallocated KV store (grown 1 -> 2 -> 4 ... 32 slots) gives
    the logits of one causal pass without a cache."""
    model = tiny_model(mixer="attention").double()
    ids = random_ids(3, 29)
    with torch.no_grad():
        prefill = model(ids).logits
    decoded = teacher_forced(model, ids, "online")
    torch.testing.assert_close(decoded, prefill, rtol=1e-12, atol=1e-12)


def test_online_decode_is_a_sequence_of_size_one_dual_steps(monkeypatch):
    """In fp64: in fp32 the two differ by their rounding (about 1e-5 on these logits each from
    the fp64 result), which says nothing about whether they compute the same thing."""
    model = tiny_model(eta_base=0.5).double()
    ids = random_ids(2, 20)
    online = teacher_forced(model, ids, "online")

    def dual_of_size_one(q, k, v, eta, W, ln_weight, ln_bias, *, eps):
        return ttt_linear_dual(q, k, v, eta, W, ln_weight, ln_bias, chunk_size=1, eps=eps)

    monkeypatch.setattr(mixer_module, "ttt_linear_online", dual_of_size_one)
    torch.testing.assert_close(teacher_forced(model, ids, "online"), online, rtol=0, atol=1e-12)
    with torch.no_grad():
        prefill = model(ids).logits
    # Pinned on purpose: online decode is NOT prefill (chunks of 8 vs steps of 1).
    assert (online[:, 8:] - prefill[:, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_multi_turn_equals_one_pass(stack):
    model = tiny_model(eta_base=0.5, **STACKS[stack])
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
    if stack == "ttt_linear":
        assert not torch.allclose(first.cache.layers[0].W, second.cache.layers[0].W)


def assert_states_close(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The layer states of two caches; KV slots past a row's length are not compared (a batch
    of ragged rows holds free slots there)."""
    for mine, theirs in zip(a.layers, b.layers, strict=True):
        if hasattr(mine, "lengths"):
            assert torch.equal(mine.lengths, theirs.lengths)
            for row, n in enumerate(mine.lengths.tolist()):
                for name in ("k", "v"):
                    torch.testing.assert_close(
                        getattr(mine, name)[row, :, :n],
                        getattr(theirs, name)[row, :, :n],
                        rtol=rtol,
                        atol=atol,
                    )
        else:
            for name, t in mine.tensors().items():
                torch.testing.assert_close(t, theirs.tensors()[name], rtol=rtol, atol=atol)


@pytest.mark.parametrize("stack", sorted(STACKS))
@pytest.mark.parametrize("decode_mode", ["online", "chunked"])
def test_rows_in_one_batch_equal_rows_alone(stack, decode_mode):
    model = tiny_model(eta_base=0.5, **STACKS[stack])
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 13, 9)]
    batch = generate(model, prompts, 7, decode_mode=decode_mode)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], 7, decode_mode=decode_mode)
        assert torch.equal(alone.tokens[0], batch.tokens[row])
        assert_states_close(alone.cache, batch.cache.select([row]))


@pytest.mark.parametrize("stack", ["attention", "hybrid"])
def test_ragged_rows_take_several_tokens_like_rows_alone(stack):
    """Several tokens at once over a cache whose rows have different lengths (the per-row mask
    path) equal each row continued alone: attention prefills them, a hybrid decodes them (TTT
    prefill needs rows at one position)."""
    model = tiny_model(**STACKS[stack])

    def run(ids, cache):
        return model.decode(ids, cache) if stack == "hybrid" else model(ids, cache=cache)

    firsts = [random_ids(1, n, seed=n) for n in (3, 11)]
    with torch.no_grad():
        alone = [model(ids, use_cache=True).cache for ids in firsts]
        more = random_ids(2, 6, seed=9)
        batch = run(more, Cache.stack(alone))
        for row in range(2):
            one = run(more[row : row + 1], alone[row])
            torch.testing.assert_close(one.logits[0], batch.logits[row], rtol=1e-5, atol=1e-5)
            assert_states_close(one.cache, batch.cache.select([row]))


@pytest.mark.parametrize("stack", ["attention", "hybrid"])
def test_generate_equals_a_manual_greedy_loop(stack):
    model = tiny_model(**STACKS[stack])
    prompt = random_ids(2, 7)
    result = generate(model, prompt, 10, decode_mode="chunked")
    with torch.no_grad():
        out = model(prompt, cache=model.new_cache(2, decode_mode="chunked"))
        tokens = []
        for _ in range(10):
            tokens.append(out.logits[:, -1].argmax(-1))
            out = model.decode(tokens[-1][:, None], out.cache)
    assert torch.equal(result.tokens, torch.stack(tokens, dim=1))
    assert_states_close(result.cache, out.cache, rtol=0, atol=0)


def test_a_kv_cache_stays_valid_after_decoding_and_branches_on_reuse():
    """Keys are written into the store in place, but an older cache never sees it: decoding
    twice from one cache (two branches) gives each branch what a fresh copy would."""
    model = tiny_model(mixer="attention")
    with torch.no_grad():
        cache = model(random_ids(1, 5), use_cache=True).cache
        cache = model.decode(random_ids(1, 1), cache).cache  # 6 tokens in 10 slots
        copy = cache.clone()
        a, b = random_ids(1, 3, seed=4), random_ids(1, 3, seed=5)
        branch_a = model.decode(a, cache)
        store = cache.layers[0].k.untyped_storage().data_ptr()
        assert branch_a.cache.layers[0].k.untyped_storage().data_ptr() == store  # in place
        branch_b = model.decode(b, cache)  # writes into a copy, not over branch_a's keys
        assert branch_b.cache.layers[0].k.untyped_storage().data_ptr() != store
        assert torch.equal(branch_a.logits, model.decode(a, copy.clone()).logits)
        assert torch.equal(branch_b.logits, model.decode(b, copy.clone()).logits)
        then_a = model.decode(b, branch_a.cache).logits
        assert torch.equal(then_a, model.decode(b, model.decode(a, copy).cache).logits)
        assert_states_close(cache, copy, rtol=0, atol=0)


def test_selecting_rows_of_a_kv_cache_keeps_only_the_slots_they_use():
    """A batch that rows join and leave reads no more slots than its longest row has."""
    model = tiny_model(mixer="attention")
    with torch.no_grad():
        rows = [model(random_ids(1, n, seed=n), use_cache=True).cache for n in (3, 20)]
        batch = Cache.stack(rows)
        short = batch.select([0])
        more = random_ids(1, 2, seed=5)
        assert torch.equal(model.decode(more, short).logits, model.decode(more, rows[0]).logits)
    assert batch.layers[0].extent == 20 and short.layers[0].extent == 3
    assert short.layers[0].k.shape[2] == 3 and not short.layers[0].ragged


def test_kv_store_grows_by_doubling_and_nbytes_counts_its_capacity():
    model = tiny_model(mixer="attention")
    with torch.no_grad():
        cache = model(random_ids(2, 5), use_cache=True).cache
        capacities = [cache.layers[0].capacity]
        for t in range(12):
            cache = model.decode(random_ids(2, 1, seed=t), cache).cache
            capacities.append(cache.layers[0].capacity)
    assert sorted(set(capacities)) == [5, 10, 20]
    H, d = model.config.n_heads, model.config.head_dim
    per_layer = 2 * 2 * H * 20 * d * 4 + 2 * 8  # k and v fp32 at 20 slots, lengths
    assert cache.nbytes() == 2 * per_layer + 2 * 8  # two layers and the offsets
    store = cache.layers[0].k
    cache = model.decode(random_ids(2, 1), cache).cache  # has room: written in place
    assert cache.layers[0].k.untyped_storage().data_ptr() == store.untyped_storage().data_ptr()


def test_where_rows_consumes_the_kv_cache_it_is_called_on():
    model = tiny_model(mixer="attention")
    with torch.no_grad():
        cache = model(random_ids(2, 4), use_cache=True).cache
        decoded = model.decode(random_ids(2, 1), cache).cache
        kept = decoded.where_rows(torch.tensor([True, False]), cache)
    assert kept.layers[0].lengths.tolist() == [5, 4] and kept.offsets.tolist() == [5, 4]
    with pytest.raises(RuntimeError, match="consumed by where_rows"):
        model.decode(random_ids(2, 1), decoded)
    with pytest.raises(ValueError, match="frozen cache must be the one this was decoded from"):
        kept.where_rows(torch.tensor([True, True]), cache.clone())


@pytest.mark.parametrize("stack", ["ttt_linear", "attention", "hybrid"])
def test_split_stack_round_trip_and_reorder(stack):
    model = tiny_model(**STACKS[stack])
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


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_cache_save_load_is_bit_exact(tmp_path, stack):
    model = tiny_model(**STACKS[stack])
    with torch.no_grad():
        cache = model(random_ids(2, 13), use_cache=True).cache
    cache.save(tmp_path / "cache.safetensors")
    loaded = Cache.load(tmp_path / "cache.safetensors", model.config.model_dump())
    assert torch.equal(loaded.offsets, cache.offsets) and loaded.decode_mode == cache.decode_mode
    assert [type(s) for s in loaded.layers] == [type(s) for s in cache.layers]
    for a, b in zip(cache.layers, loaded.layers, strict=True):
        for name, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[name])
    with torch.no_grad():  # and it continues the sequence like the cache it was saved from
        more = random_ids(2, 3, seed=6)
        assert torch.equal(model.decode(more, loaded).logits, model.decode(more, cache).logits)


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_a_fresh_cache_saves_and_continues_like_itself(tmp_path, stack):
    """An empty cache (a new session's state) saves although its tensors may share storage
    (TTT-E2E's ring and start), and loads into one that decodes the same."""
    model = tiny_model(**STACKS[stack])
    fresh = model.new_cache(1, decode_mode="chunked")
    fresh.save(tmp_path / "fresh.safetensors")
    loaded = Cache.load(tmp_path / "fresh.safetensors", model.config.model_dump())
    with torch.no_grad():
        ids = random_ids(1, 11, seed=7)
        assert torch.equal(model(ids, cache=loaded).logits, model(ids, cache=fresh).logits)


def test_cache_from_another_config_is_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model(random_ids(1, 4), use_cache=True).cache.save(tmp_path / "c.safetensors")
    other = ModelConfig.from_preset("debug_tiny", n_heads=2).model_dump()
    with pytest.raises(ValueError, match=r"different model config.*n_heads: cache 4 vs model 2"):
        TTTCache.load(tmp_path / "c.safetensors", other)
    attention = ModelConfig.from_preset("debug_tiny", mixer="attention").model_dump()
    with pytest.raises(ValueError, match=r"mixer: cache 'ttt_linear' vs model 'attention'"):
        KVCache.load(tmp_path / "c.safetensors", attention)
    hybrid = ModelConfig.from_preset("debug_tiny", **STACKS["hybrid"]).model_dump()
    with pytest.raises(ValueError, match=r"layer_mixers: cache None vs model \['attention'"):
        Cache.load(tmp_path / "c.safetensors", hybrid)
    header = {"format_version": 1, "kind": "ttt_linear"}  # the format of per-mixer caches
    save_file({"offsets": torch.zeros(1)}, tmp_path / "v1", metadata={"header": json.dumps(header)})
    with pytest.raises(ValueError, match=r"v1: cache format 1; this version loads format 2"):
        Cache.load(tmp_path / "v1", model.config.model_dump())


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


@pytest.mark.parametrize("stack", ["ttt_linear", "hybrid"])
def test_rows_stop_at_eos_and_keep_their_state(stack):
    model = tiny_model(**STACKS[stack])
    prompt = random_ids(2, 6)
    free = generate(model, prompt, 10)
    eos = int(free.tokens[0, 2])  # row 0 will stop at its third token
    stopped = generate(model, prompt, 10, eos_id=eos)
    n0 = int(stopped.lengths[0])
    assert n0 == int((free.tokens[0] == eos).nonzero()[0]) + 1
    assert (stopped.tokens[0, n0:] == eos).all()
    alone = generate(model, prompt[:1], n0)
    assert_states_close(stopped.cache.select([0]), alone.cache)
    frozen = stopped.cache.select([0]).layers[-1].W
    assert (frozen - free.cache.select([0]).layers[-1].W).abs().max() > 1e-4
    assert int(stopped.cache.offsets[0]) == 6 + n0
    if stack == "hybrid":  # the frozen row's keys stop where it ended; the other row's go on
        assert stopped.cache.layers[0].lengths.tolist() == [6 + n0, 6 + 10]


def test_bad_sampling_arguments_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="top_p"):
        generate(model, random_ids(1, 3), 2, temperature=1.0, top_p=1.5)
    with pytest.raises(RuntimeError, match="eval"):
        generate(model.train(), random_ids(1, 3), 2)
