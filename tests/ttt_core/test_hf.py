"""transformers interop (`ttt_core.hf`): logits, greedy and beam generation, cache continuation
and batch expansion, save/load and the export, checked against the project's own model and
generate and a brute-force beam search. Skipped when transformers is not installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="transformers not installed (optional extra [hf])")

from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from ttt_core import TTTLM, IntegrityError, ModelConfig, generate
from ttt_core.hf import (
    TTTLinearConfig,
    TTTLinearForCausalLM,
    TTTStateCache,
    load_tokenizer,
)

from .helpers import E2E, LACT

VOCAB = 32
CASES = [
    ("ttt_linear", "online"),
    ("ttt_linear", "chunked"),
    ("attention", "online"),
    ("lact", "online"),
    ("swa", "online"),
    ("e2e", "online"),
]
# Per-mixer settings of the tiny models (chunk and window 8: the tests span several).
# "e2e" is swa with TTT-E2E suffix blocks (its options name the mixer).
MIXER_OPTIONS = {"lact": LACT, "swa": dict(window_size=8), "e2e": E2E}


def tiny_model(mixer: str = "ttt_linear", decode_mode: str = "online", vocab: int = VOCAB):
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "debug_tiny", vocab_size=vocab, decode_mode=decode_mode, eta_base=0.5,
        **{"mixer": mixer, **MIXER_OPTIONS.get(mixer, {})},
    )  # fmt: skip
    model = TTTLM(config).eval()
    # Larger inner steps than the default make decode-mode differences visible.
    for block in model.blocks:
        if hasattr(block.mixer, "eta_gate"):
            torch.nn.init.normal_(block.mixer.eta_gate.weight, std=1.0)
    return model


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_generate(model: TTTLinearForCausalLM, ids: torch.Tensor, **kwargs):
    """`generate` with no EOS / padding ids: every row runs to max_new_tokens."""
    return model.generate(ids, eos_token_id=None, pad_token_id=None, **kwargs)


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention", "lact", "swa", "e2e"])
def test_logits_equal_the_wrapped_model_in_prefill_and_decode(mixer):
    model = tiny_model(mixer)
    hf = TTTLinearForCausalLM.from_ttt(model)
    ids = random_ids(2, 13)
    with torch.no_grad():
        prefill = hf(ids[:, :10], use_cache=True)
        step = hf(ids[:, 10:11], past_key_values=prefill.cache)
        expected = model(ids[:, :10], use_cache=True)
        expected_step = model.decode(ids[:, 10:11], expected.cache)
    torch.testing.assert_close(prefill.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(step.logits, expected_step.logits, rtol=0, atol=1e-6)
    assert prefill.cache.get_seq_length() == 11  # updated in place by the decode step
    assert torch.equal(step.cache.state.offsets, expected_step.cache.offsets)


@pytest.mark.parametrize(("mixer", "decode_mode"), CASES)
def test_greedy_generate_equals_the_projects_generate(mixer, decode_mode):
    model = tiny_model(mixer, decode_mode)
    hf = TTTLinearForCausalLM.from_ttt(model)
    ids = random_ids(2, 11)
    out = hf_generate(hf, ids, max_new_tokens=10, do_sample=False)
    assert torch.equal(out[:, :11], ids)
    assert torch.equal(out[:, 11:], generate(model, ids, 10).tokens)


def test_decode_mode_comes_from_the_config_and_changes_tokens():
    model = tiny_model("ttt_linear", "online")
    ids = random_ids(1, 5)
    online = hf_generate(TTTLinearForCausalLM.from_ttt(model), ids, max_new_tokens=20)
    chunked_hf = TTTLinearForCausalLM.from_ttt(model, decode_mode="chunked")
    chunked = hf_generate(chunked_hf, ids, max_new_tokens=20)
    assert chunked_hf.config.model["decode_mode"] == "chunked"
    assert torch.equal(chunked[:, 5:], generate(model, ids, 20, decode_mode="chunked").tokens)
    assert not torch.equal(online, chunked)  # so the two greedy checks above are distinct


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention", "lact", "swa", "e2e"])
def test_two_turn_continuation_with_the_cache_equals_one_pass(mixer):
    model = tiny_model(mixer, "chunked")  # chunked decode == the dual form of a single pass
    hf = TTTLinearForCausalLM.from_ttt(model)
    turn1, turn2 = random_ids(1, 16, seed=2), random_ids(1, 8, seed=3)
    first = hf_generate(hf, turn1, max_new_tokens=8, return_dict_in_generate=True)
    cache = first.cache
    assert isinstance(cache, TTTStateCache)
    history = torch.cat([first.sequences, turn2], dim=1)
    second = hf_generate(hf, history, cache=cache, max_new_tokens=6)
    one_pass = hf_generate(hf, history, max_new_tokens=6)
    assert torch.equal(second, one_pass)
    # The project's own multi-turn generate agrees.
    project_first = generate(model, turn1, 8)
    project_second = generate(model, turn2, 6, cache=project_first.cache)
    assert torch.equal(second[:, history.shape[1] :], project_second.tokens)
    assert cache.get_seq_length() == history.shape[1] + 6 - 1  # the last token is not fed back


def _brute_force_log_probs(model: TTTLM, prompt: torch.Tensor, horizon: int) -> torch.Tensor:
    """log p(t_1..t_horizon | prompt) for every continuation, (V,) * horizon, by expanding the
    whole tree with the project's own prefill + decode (no transformers code)."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        total = out.logits[:, -1].float().log_softmax(-1)  # (1, V)
        cache, rows = out.cache, torch.zeros(1, 0, dtype=torch.long)
        for _ in range(horizon - 1):
            n = rows.shape[0]
            rows = torch.cat(
                [rows.repeat_interleave(VOCAB, 0), torch.arange(VOCAB).repeat(n)[:, None]], 1
            )
            cache = cache.select(torch.arange(n).repeat_interleave(VOCAB))
            out = model.decode(rows[:, -1:], cache)
            cache = out.cache
            total = total.reshape(-1, 1) + out.logits[:, -1].float().log_softmax(-1)
    return total.reshape((VOCAB,) * horizon)


def _reference_beam_search(log_probs: torch.Tensor, beams: int) -> list[tuple[tuple, float]]:
    """Beam search over a table of sequence log-probs: keep the `beams` best prefixes by
    cumulative log-prob at every step. Returns the final beams, best first."""
    horizon = log_probs.dim()
    prefix_scores = [log_probs.logsumexp(tuple(range(k, horizon))) for k in range(1, horizon)]
    prefix_scores.append(log_probs)  # prefix_scores[k - 1]: log p(t_1..t_k), shape (V,) * k
    kept: list[tuple] = [()]
    for k in range(1, horizon + 1):
        candidates = [(*p, t) for p in kept for t in range(VOCAB)]
        candidates.sort(key=lambda seq: -float(prefix_scores[k - 1][seq]))
        kept = candidates[:beams]
    return [(seq, float(log_probs[seq])) for seq in kept]


@pytest.mark.parametrize(("mixer", "decode_mode"), CASES)
def test_beam_search_returns_the_beams_of_a_brute_force_search(mixer, decode_mode):
    model = tiny_model(mixer, decode_mode)
    hf = TTTLinearForCausalLM.from_ttt(model)
    prompt, horizon, beams = random_ids(1, 6, seed=4), 3, 3
    table = _brute_force_log_probs(model, prompt, horizon)
    expected = _reference_beam_search(table, beams)
    # Same length for every beam (no EOS), so the length penalty cannot reorder them.
    out = hf_generate(
        hf, prompt, max_new_tokens=horizon, num_beams=beams, num_return_sequences=beams,
        length_penalty=0.0, early_stopping=True, do_sample=False,
        return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    got = [tuple(row[6:].tolist()) for row in out.sequences]
    assert got == [seq for seq, _ in expected]
    torch.testing.assert_close(
        out.sequences_scores, torch.tensor([s for _, s in expected]), rtol=1e-5, atol=1e-5
    )
    best = hf_generate(hf, prompt, max_new_tokens=horizon, num_beams=beams, length_penalty=0.0)
    assert tuple(best[0, 6:].tolist()) == expected[0][0]


def test_num_return_sequences_repeats_rows_and_a_passed_cache():
    model = tiny_model("ttt_linear", "online")
    hf = TTTLinearForCausalLM.from_ttt(model)
    ids = random_ids(2, 7)
    # top_k=1 sampling is greedy: every returned copy of a row must equal its greedy output.
    out = hf_generate(hf, ids, max_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=3)
    greedy = generate(model, ids, 5).tokens
    assert out.shape == (6, 12)
    assert torch.equal(out[:, 7:], greedy.repeat_interleave(3, dim=0))

    # A cache passed in (a continued conversation) is expanded to the same rows. The cache is
    # updated in place, so each continuation gets its own first turn.
    def first_turn():
        return hf_generate(hf, ids[:1], max_new_tokens=4, return_dict_in_generate=True)

    history = torch.cat([first_turn().sequences, ids[1:, :3]], dim=1)
    copies = hf_generate(
        hf, history, cache=first_turn().cache, max_new_tokens=4, do_sample=True, top_k=1,
        num_return_sequences=2,
    )  # fmt: skip
    single = hf_generate(hf, history, cache=first_turn().cache, max_new_tokens=4)
    assert torch.equal(copies, single.repeat(2, 1))
    assert not torch.equal(single, hf_generate(hf, history, max_new_tokens=4))  # used the cache


LOAD_OPTIONS = [
    {},
    {"torch_dtype": torch.float32},
    {"dtype": torch.float32},
    {"device_map": "cpu"},
    {"low_cpu_mem_usage": True},
]


@pytest.mark.parametrize("options", LOAD_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize(
    ("mixer", "tied"),
    [("ttt_linear", False), ("attention", False), ("ttt_linear", True), ("lact", False)],
)
def test_save_and_from_pretrained_round_trip_through_auto_classes(tmp_path, mixer, tied, options):
    model = tiny_model(mixer)
    if tied:  # the saved weights hold embed.weight only; transformers must tie the head to it
        torch.manual_seed(0)
        config = model.config.model_copy(update={"tie_embeddings": True})
        model = TTTLM(config).eval()
    hf = TTTLinearForCausalLM.from_ttt(model)
    hf.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "ttt_linear"
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), TTTLinearConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", **options)
    assert isinstance(loaded, TTTLinearForCausalLM)
    assert not loaded.training
    saved, got = hf.model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == got.keys()
    assert all(torch.equal(saved[k], got[k]) and got[k].dtype == torch.float32 for k in saved)
    assert (loaded.model.lm_head.weight is loaded.model.embed.weight) == tied
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, hf(ids).logits, rtol=0, atol=0)
    # The project's loader reads the same directory.
    assert TTTLM.from_pretrained(tmp_path / "m").config == hf.model.config


def test_from_pretrained_takes_dtype_and_decode_mode_as_transformers_options(tmp_path):
    hf = TTTLinearForCausalLM.from_ttt(tiny_model())
    hf.save_pretrained(tmp_path / "m")
    double = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    ids = random_ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(double(ids).logits.float(), hf(ids).logits, rtol=0, atol=1e-5)
    chunked = AutoModelForCausalLM.from_pretrained(tmp_path / "m", decode_mode="chunked")
    assert chunked.decode_mode == "chunked" == chunked.config.model["decode_mode"]
    assert hf.decode_mode == "online"  # the saved config is untouched
    with pytest.raises(ValueError, match="decode_mode"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", decode_mode="sideways")


def test_from_pretrained_verifies_checksums_before_transformers_reads(tmp_path):
    TTTLinearForCausalLM.from_ttt(tiny_model()).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 .* does not match"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "checksums.json").unlink()
    with pytest.raises(IntegrityError, match=r"checksums\.json: missing"):
        TTTLinearForCausalLM.from_pretrained(tmp_path / "m")


def test_an_export_loads_with_auto_classes_and_its_tokenizer(tmp_path):
    from data_stage import CorpusConfig, TokenizerConfig, train_tokenizer
    from data_stage import load_tokenizer as project_tokenizer
    from train_stage.export import save_export

    tokenizer_dir = tmp_path / "tokenizer"
    train_tokenizer(
        TokenizerConfig(
            corpus=CorpusConfig(max_bytes=20_000), out=tokenizer_dir, vocab_size=300,
            byte_fallback=False,
        )
    )  # fmt: skip
    model = tiny_model(vocab=300)
    export = save_export(model, tmp_path / "export", tokenizer_dir, {"step": 1})
    hf = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = load_tokenizer(export)
    text = "def main(argv):\n    return 0 if argv else 1"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == project_tokenizer(tokenizer_dir).encode(text)
    out = hf.generate(ids, max_new_tokens=4, num_beams=3, eos_token_id=None, pad_token_id=None)
    assert out.shape == (1, ids.shape[1] + 4)
    assert isinstance(tokenizer.decode(out[0, ids.shape[1] :]), str)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_bad_inputs_are_refused_with_the_cause(tmp_path):
    hf = TTTLinearForCausalLM.from_ttt(tiny_model())
    ids = random_ids(2, 5)
    with pytest.raises(ValueError, match="attention_mask: padding"):
        hf(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(TypeError, match="cache: a TTTStateCache is needed, got DynamicCache"):
        hf(ids, cache=DynamicCache(config=hf.config))
    with pytest.raises(ValueError, match="unsupported arguments \\['output_attentions'\\]"):
        hf(ids, output_attentions=True)
    with pytest.raises(TypeError, match="unsupported options \\['safe_serialization'\\]"):
        hf.save_pretrained(tmp_path / "x", safe_serialization=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"TTTLinearConfig\.model: missing"):
        TTTLinearConfig()
    with pytest.raises(ValueError, match=r"TTTStateCache\.reorder_cache: the cache is empty"):
        TTTStateCache().reorder_cache(torch.tensor([0]))


def test_import_ttt_core_does_not_import_transformers():
    code = (
        "import sys, ttt_core; from ttt_core import TTTLM, generate; "
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
