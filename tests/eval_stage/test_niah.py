"""niah: deterministic prompts with the needle at its depth; scoring with stub answerers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_stage import ShardDataset, load_tokenizer
from eval_stage import (
    EvalInputError,
    NiahConfig,
    build_cases,
    evaluate_niah,
    open_model,
    publish,
    score_cases,
)
from eval_stage.niah import NEEDLE, QUESTION, NiahCase, is_correct

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
    assert len({c.passkey for c in cases}) > 1


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

    rows, cells = score_cases(cases, oracle(cases))
    assert all(r.correct for r in rows) and {c.accuracy for c in cells} == {1.0}
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
    config = NiahConfig(data=shard_dir, contexts=[100, 140], depths=[0.0, 1.0], trials=1)
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
