"""niah: deterministic prompts with the needle at its depth; rank scoring (a copying model
scores 1, models that ignore the prompt score chance) and greedy scoring with stub answerers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from data_stage import ShardDataset, load_tokenizer
from eval_stage import (
    EvalInputError,
    EvalResult,
    NiahConfig,
    build_cases,
    evaluate_niah,
    niah,
    open_model,
    publish,
    read_result,
    score_cases,
)
from eval_stage.niah import (
    ANSWER,
    NEEDLE,
    QUESTION,
    NiahCase,
    chance_level,
    is_correct,
    likelihood_scorer,
    rank_credit,
    score_ranked,
)
from ttt_core import PRESETS, TTTLM, ModelConfig, family_settings

from .helpers import VOCAB, ConstantLM, InductionLM, UniformLM, as_loaded, tiny_model

CONFIG = dict(contexts=[128, 200], depths=[0.0, 0.5, 1.0], trials=2)


@pytest.fixture(scope="module")
def cases(shard_dir: Path, tokenizer_dir: Path) -> list[NiahCase]:
    ds = ShardDataset(shard_dir, "val")
    return build_cases(ds, load_tokenizer(tokenizer_dir), NiahConfig(data=shard_dir, **CONFIG))


def test_prompts_are_deterministic_and_hold_the_needle_at_its_depth(
    cases: list[NiahCase], shard_dir: Path, tokenizer_dir: Path
) -> None:
    tok = load_tokenizer(tokenizer_dir)
    again = build_cases(ShardDataset(shard_dir, "val"), tok, NiahConfig(data=shard_dir, **CONFIG))
    assert again == cases
    assert len(cases) == 2 * 3 * 2
    question = tok.encode(QUESTION)
    for case in cases:
        needle = tok.encode(NEEDLE.format(key=case.passkey))
        assert len(case.prompt) == case.context
        assert case.prompt[0] == tok.bos_id and case.prompt[-len(question) :] == question
        assert case.prompt[case.needle_at : case.needle_at + len(needle)] == needle
        hay_len = case.context - 1 - len(needle) - len(question)
        assert case.needle_at == 1 + round(case.depth * hay_len)
        assert re.fullmatch(r"[1-9]\d{4}", case.passkey)
        assert tok.bos_id not in case.prompt[1:] and tok.eos_id not in case.prompt
        assert len(set(case.candidates)) == 10 and case.passkey in case.candidates
        assert all(re.fullmatch(r"[1-9]\d{4}", k) for k in case.candidates)
    assert len({c.passkey for c in cases}) > 1
    # the passkey's place among the candidates is random, so a position bias cannot score
    assert len({c.candidates.index(c.passkey) for c in cases}) > 3


def test_the_candidate_count_does_not_change_the_prompts(
    cases: list[NiahCase], shard_dir: Path, tokenizer_dir: Path
) -> None:
    config = NiahConfig(data=shard_dir, candidates=3, **CONFIG)
    other = build_cases(ShardDataset(shard_dir, "val"), load_tokenizer(tokenizer_dir), config)
    assert [c.prompt for c in other] == [c.prompt for c in cases]
    assert all(len(c.candidates) == 3 for c in other)


def test_another_seed_gives_other_prompts(
    cases: list[NiahCase], shard_dir: Path, tokenizer_dir: Path
) -> None:
    config = NiahConfig(data=shard_dir, seed=1, **CONFIG)
    other = build_cases(ShardDataset(shard_dir, "val"), load_tokenizer(tokenizer_dir), config)
    assert [c.passkey for c in other] != [c.passkey for c in cases]


def test_an_answerer_reading_the_prompt_scores_one_and_a_wrong_one_zero(
    cases: list[NiahCase], tokenizer_dir: Path
) -> None:
    tok = load_tokenizer(tokenizer_dir)

    def oracle(batch: list[NiahCase]) -> list[str]:  # finds the key in the prompt text itself
        return [
            " " + re.search(r"pass key is (\d+)\.", tok.decode(c.prompt)).group(1) + "."
            for c in batch
        ]

    def off_by_one(batch: list[NiahCase]) -> list[str]:
        return [f" {int(c.passkey) + 1}" for c in batch]

    rows, cells = score_cases(cases, oracle(cases), chance=0.5)
    assert all(r.correct for r in rows) and {c.accuracy for c in cells} == {1.0}
    assert {c.chance for c in cells} == {0.5}
    assert [(c.context, c.depth, c.trials) for c in cells] == [
        (ctx, d, 2) for ctx in (128, 200) for d in (0.0, 0.5, 1.0)
    ]
    rows, cells = score_cases(cases, off_by_one(cases), role="baseline")
    assert not any(r.correct for r in rows) and {c.accuracy for c in cells} == {0.0}
    assert {c.role for c in cells} == {"baseline"}


@pytest.mark.parametrize(
    ("answer", "correct"),
    [(" 12345.", True), ("12345", True), ("\n 12345 is", True), (" 123456", False),
     (" 1234", False), (" the key 12345", False), ("", False)],
)  # fmt: skip
def test_exact_match_compares_the_leading_digits(answer: str, correct: bool) -> None:
    assert is_correct(answer, "12345") is correct


def test_scoring_needs_one_answer_per_case(cases: list[NiahCase]) -> None:
    with pytest.raises(ValueError, match="answers"):
        score_cases(cases, ["1"])


def test_greedy_eval_of_model_and_baseline_writes_table_and_heatmap(
    shard_dir: Path, model_dir: Path, baseline_dir: Path, tmp_path: Path
) -> None:
    config = NiahConfig(
        data=shard_dir, contexts=[100, 140], depths=[0.0, 1.0], trials=1, scoring="greedy"
    )
    result = evaluate_niah(open_model(model_dir), config, open_model(baseline_dir))
    files = publish(result, tmp_path)
    assert [f.name for f in files] == ["niah.json", "niah.png"]
    assert len(result.tables["cells"]) == 2 * 2 * 2 and len(result.tables["cases"]) == 8
    for role in ("model", "baseline"):
        assert 0.0 <= result.metrics[f"niah/{role}/accuracy"] <= 1.0
        assert set(result.metrics) >= {
            f"niah/{role}/ctx_100/accuracy",
            f"niah/{role}/ctx_140/accuracy",
        }


def test_a_context_too_short_for_needle_and_question_is_refused(
    shard_dir: Path, tokenizer_dir: Path
) -> None:
    config = NiahConfig(data=shard_dir, contexts=[16])
    with pytest.raises(EvalInputError, match="cannot hold"):
        build_cases(ShardDataset(shard_dir, "val"), load_tokenizer(tokenizer_dir), config)


def test_a_context_longer_than_the_val_stream_is_refused(
    shard_dir: Path, tokenizer_dir: Path
) -> None:
    config = NiahConfig(data=shard_dir, contexts=[1 << 20])
    with pytest.raises(EvalInputError, match="longer than the val stream"):
        build_cases(ShardDataset(shard_dir, "val"), load_tokenizer(tokenizer_dir), config)


@pytest.mark.parametrize(
    ("scores", "true_index", "credit"),
    [([-1.0, -2.0, -3.0], 0, 1.0), ([-1.0, -2.0, -3.0], 1, 0.0), ([-1.0, -1.0, -3.0], 1, 0.5),
     ([-2.0, -2.0, -2.0], 2, 1 / 3), ([-2.0, -1.0, -1.0], 0, 0.0)],
)  # fmt: skip
def test_rank_credit_splits_ties_at_the_top(
    scores: list[float], true_index: int, credit: float
) -> None:
    assert rank_credit(scores, true_index) == pytest.approx(credit)


def test_ranked_scoring_needs_a_score_per_candidate(cases: list[NiahCase]) -> None:
    with pytest.raises(ValueError, match="one score per candidate"):
        score_ranked(cases, [[0.0]] * len(cases))


def test_chance_level_of_each_scoring(shard_dir: Path) -> None:
    assert chance_level(NiahConfig(data=shard_dir, candidates=4)) == 0.25
    assert chance_level(NiahConfig(data=shard_dir, scoring="greedy", digits=3)) == 1 / 900


def test_options_that_do_not_fit_are_refused(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match="candidates is for scoring=rank"):
        NiahConfig(data=shard_dir, scoring="greedy", candidates=5)
    with pytest.raises(ValueError, match="candidates 10 > the 9 keys of 1 digits"):
        NiahConfig(data=shard_dir, digits=1)
    with pytest.raises(ValueError, match="scoring"):
        NiahConfig(data=shard_dir, scoring="exact")


def test_likelihood_scores_are_the_answer_log_likelihood_after_the_prompt(
    cases: list[NiahCase], tokenizer_dir: Path
) -> None:
    tok, model = load_tokenizer(tokenizer_dir), tiny_model()
    # two prompt lengths, three candidates each (rows of one length are batched together)
    few = [dataclasses.replace(c, candidates=c.candidates[:3]) for c in (cases[0], cases[-1])]
    scores = likelihood_scorer(model, tok, batch_size=2)(few)
    for case, row in zip(few, scores, strict=True):
        for key, score in zip(case.candidates, row, strict=True):
            expected = _whole_row_log_likelihood(model, tok, case, key)
            assert score == pytest.approx(expected, abs=1e-4)


def _whole_row_log_likelihood(model, tok, case: NiahCase, key: str) -> float:
    """The answer's log-likelihood from one forward over prompt + answer, log-softmax by hand."""
    answer = tok.encode(ANSWER.format(key=key))
    ids = torch.tensor([case.prompt + answer])
    with torch.no_grad():
        logp = model(ids[:, :-1]).logits[0].double().log_softmax(-1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][-len(answer) :].sum())


@pytest.mark.parametrize("family", ["ttt_linear", "attention", "none", "swa", "lact", "e2e"])
def test_cached_scores_equal_a_whole_row_forward_per_candidate_fp64(
    family: str, cases: list[NiahCase], tokenizer_dir: Path
) -> None:
    """The scorer prefills each prompt once and continues copies of its cache with the answers
    (mid-chunk: prompts of 128 and 200 tokens); the reference runs prompt + answer whole."""
    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    settings = family_settings(family, PRESETS["debug_tiny"])
    model = TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=VOCAB, **settings))
    model = model.double().eval()
    few = [dataclasses.replace(c, candidates=c.candidates[:4]) for c in (cases[0], cases[-1])]
    scores = likelihood_scorer(model, tok, batch_size=3)(few)
    for case, row in zip(few, scores, strict=True):
        for key, score in zip(case.candidates, row, strict=True):
            expected = _whole_row_log_likelihood(model, tok, case, key)
            assert score == pytest.approx(expected, abs=1e-9, rel=1e-9)


def _rank_eval(model, shard_dir: Path, **overrides) -> EvalResult:
    config = NiahConfig(data=shard_dir, **{**CONFIG, "batch_size": 16, **overrides})
    return evaluate_niah(as_loaded(model), config)


def test_a_model_that_copies_scores_one(shard_dir: Path) -> None:
    result = _rank_eval(InductionLM(VOCAB), shard_dir)
    assert result.metrics["niah/model/accuracy"] == 1.0
    assert result.metrics["niah/chance"] == 0.1
    assert {c["chance"] for c in result.tables["cells"]} == {0.1}
    assert all(r["correct"] and r["answer"] == r["passkey"] for r in result.tables["cases"])


def test_a_model_that_ignores_the_prompt_scores_chance(shard_dir: Path) -> None:
    # Uniform logits: every candidate ties, so each case earns exactly 1/candidates.
    result = _rank_eval(UniformLM(VOCAB), shard_dir, candidates=4)
    assert result.metrics["niah/model/accuracy"] == pytest.approx(0.25, abs=1e-12)
    assert result.metrics["niah/chance"] == 0.25
    # Fixed random logits: no ties; accuracy is a mean of 200 Bernoulli(1/4) draws
    # (sd 0.031), and 0.25 must lie within its bootstrap interval.
    result = _rank_eval(ConstantLM(VOCAB), shard_dir, candidates=4, contexts=[100], depths=[0.5],
                        trials=200)  # fmt: skip
    metrics = result.metrics
    assert abs(metrics["niah/model/accuracy"] - 0.25) < 4 * 0.031
    assert metrics["niah/model/accuracy_lo"] < 0.25 < metrics["niah/model/accuracy_hi"]


def test_rank_eval_of_model_and_baseline_writes_chance_interval_and_heatmap(
    shard_dir: Path, model_dir: Path, baseline_dir: Path, tmp_path: Path
) -> None:
    config = NiahConfig(data=shard_dir, contexts=[100, 140], depths=[0.0, 1.0], trials=2,
                        candidates=5, digits=3)  # fmt: skip
    result = evaluate_niah(open_model(model_dir), config, open_model(baseline_dir))
    files = publish(result, tmp_path)
    assert [f.name for f in files] == ["niah.json", "niah.png"]
    saved = read_result(files[0])
    assert saved.metrics["niah/chance"] == 0.2
    for role in ("model", "baseline"):
        m = saved.metrics
        assert m[f"niah/{role}/accuracy_lo"] <= m[f"niah/{role}/accuracy"]
        assert m[f"niah/{role}/accuracy"] <= m[f"niah/{role}/accuracy_hi"]
    text = niah.summarize(saved)
    assert "chance 0.2" in text and "95% CI" in text
