"""`niah`: needle-in-a-haystack passkey retrieval, in three separable steps.

1. `build_cases`: for each (context length, depth, trial) a prompt of exactly `context` tokens:
   `[BOS] haystack[:k] NEEDLE haystack[k:] QUESTION`, k = round(depth x haystack length). The
   haystack is token ids taken directly from the val stream (no decode/re-encode round trip), from
   a seeded random offset, with BOS/EOS/PAD removed so the prompt reads as one document.
   The passkey is `digits` random digits (first one non-zero). Everything derives from
   `random.Random("niah:<seed>:<context>:<depth>:<trial>")`: same seed, same prompts.
   Each case also carries `candidates`: the passkey and distinct random distractor keys of
   the same length, the passkey at a random place among them.
2. Answering, by `NiahConfig.scoring`:
   - rank (default): a `Scorer` gives each candidate a score; `likelihood_scorer` is the
     model's log-likelihood of ANSWER (" <key>") after the prompt. Credit 1 when the passkey
     scores highest, 1/m when it ties with m - 1 others at the top, else 0. A scorer that does
     not read the prompt has expected accuracy exactly 1/candidates (the passkey is a uniformly
     random member of a set of i.i.d. keys): the chance level reported with the result.
   - greedy: an `Answerer` maps cases to continuation texts; `greedy_answerer` generates
     greedily. Exact match: the answer's leading digits (after optional whitespace) must equal
     the passkey; chance is one key in 9 x 10^(digits - 1).
3. `score_ranked` / `score_cases`: per-case rows and accuracy per (context, depth) cell.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from data_stage import ShardDataset, Tokenizer, load_tokenizer
from ttt_core import TTTLM, generate

from .bootstrap import CONFIDENCE, format_interval, mean_interval
from .config import NiahConfig
from .data import check_fits, open_val, read_stream, stream_length
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "niah"
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"
_LEADING_DIGITS = re.compile(r"\s*(\d+)")


@dataclass(frozen=True)
class NiahCase:
    context: int  # prompt length in tokens
    depth: float
    trial: int
    passkey: str
    needle_at: int  # index in `prompt` of the needle's first token
    prompt: list[int]
    candidates: tuple[str, ...]  # distinct keys, the passkey among them


Answerer = Callable[[list[NiahCase]], list[str]]
T = TypeVar("T")
Scorer = Callable[[list[NiahCase]], list[list[float]]]  # a score per candidate, higher = likelier


class NiahCaseRow(BaseModel):
    """`answer`: the generated text (greedy) or the top-scoring candidate (rank); `credit`:
    1 right, 0 wrong, 1/m for the passkey tied with m - 1 others at the top (rank only)."""

    role: Role
    context: int
    depth: float
    trial: int
    passkey: str
    answer: str
    correct: bool
    credit: float


class NiahCell(BaseModel):
    """`correct`: summed credit of the cell's `trials` cases; `accuracy` = correct / trials."""

    role: Role
    context: int
    depth: float
    trials: int
    correct: float
    accuracy: float
    chance: float


def _haystack(ds: ShardDataset, rng: random.Random, length: int, special: np.ndarray) -> list[int]:
    """`length` non-special ids of the val stream from a random offset (wrapping at the end)."""
    total = stream_length(ds)
    pos, read, out = rng.randrange(total), 0, []
    while len(out) < length:
        if read > 2 * total:
            raise EvalInputError(f"{ds.directory}: the val split has too few non-special tokens")
        take = min(length - len(out) + 64, total - pos)
        chunk = read_stream(ds, pos, take)
        out += chunk[~np.isin(chunk, special)].tolist()
        pos, read = (pos + take) % total, read + take
    return out[:length]


def _random_key(rng: random.Random, digits: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))


def _candidates(rng: random.Random, passkey: str, count: int) -> tuple[str, ...]:
    """`count` distinct keys of the passkey's length, the passkey at a uniformly random place."""
    keys: list[str] = []
    while len(keys) < count - 1:
        key = _random_key(rng, len(passkey))
        if key != passkey and key not in keys:
            keys.append(key)
    keys.insert(rng.randrange(count), passkey)
    return tuple(keys)


def chance_level(config: NiahConfig) -> float:
    """Expected accuracy of an answerer that does not read the prompt."""
    if config.scoring == "rank":
        return 1.0 / config.candidates
    return 1.0 / (9 * 10 ** (config.digits - 1))


def build_cases(ds: ShardDataset, tokenizer: Tokenizer, config: NiahConfig) -> list[NiahCase]:
    """Every prompt of the grid, in (context, depth, trial) order. Refused when a context
    cannot hold the needle and question, or is longer than the val stream."""
    special = np.array([tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id])
    question = tokenizer.encode(QUESTION)
    if max(config.contexts) > stream_length(ds):
        raise EvalInputError(
            f"{ds.directory}: context {max(config.contexts)} is longer than the val stream "
            f"({stream_length(ds)} tokens); use shorter --contexts or more val data"
        )
    cases = []
    for context in config.contexts:
        for depth in config.depths:
            for trial in range(config.trials):
                rng = random.Random(f"niah:{config.seed}:{context}:{depth}:{trial}")
                key = _random_key(rng, config.digits)
                needle = tokenizer.encode(NEEDLE.format(key=key))
                hay_len = context - 1 - len(needle) - len(question)
                if hay_len < 0:
                    raise EvalInputError(
                        f"context {context} cannot hold BOS + needle + question "
                        f"({1 + len(needle) + len(question)} tokens); use longer --contexts"
                    )
                hay = _haystack(ds, rng, hay_len, special)
                at = round(depth * hay_len)
                prompt = [tokenizer.bos_id, *hay[:at], *needle, *hay[at:], *question]
                # drawn after the haystack: the prompts do not depend on `candidates`
                keys = _candidates(rng, key, config.candidates)
                cases.append(NiahCase(context, depth, trial, key, 1 + at, prompt, keys))
    return cases


def greedy_answerer(
    model: nn.Module, tokenizer: Tokenizer, max_new_tokens: int, batch_size: int
) -> Answerer:
    """Greedy continuation of each prompt (stops at EOS), decoded to text."""

    def answer(cases: list[NiahCase]) -> list[str]:
        texts = []
        for i in range(0, len(cases), batch_size):
            batch = cases[i : i + batch_size]
            result = generate(
                model,
                [c.prompt for c in batch],
                max_new_tokens,
                temperature=0.0,
                eos_id=tokenizer.eos_id,
            )
            texts += [
                tokenizer.decode(row[:n].tolist())
                for row, n in zip(result.tokens, result.lengths.tolist(), strict=True)
            ]
        return texts

    return answer


def likelihood_scorer(model: TTTLM, tokenizer: Tokenizer, batch_size: int) -> Scorer:
    """Score of a candidate = log-likelihood of ANSWER.format(key=candidate) after the prompt:
    minus the summed next-token losses of its tokens. Each prompt is prefilled once
    (`batch_size` prompts of one length at a time); every candidate's answer then continues a
    copy of its prompt's cache (`batch_size` answers of one length at a time), so a case costs
    one forward over its prompt plus its candidates' few answer tokens, not a forward over
    prompt + answer per candidate. Equal to the latter (tests/eval_stage/test_niah.py)."""
    device = model_device(model)

    def answer_log_likelihoods(first: Tensor, cache, answers: list[list[int]]) -> list[float]:
        """first (n, V) log-probs after each row's prompt; answers: n id lists of one length."""
        ids = torch.tensor(answers, dtype=torch.long, device=device)  # (n, A)
        logp = first.gather(1, ids[:, :1])  # (n, 1): the first answer token
        if ids.shape[1] > 1:
            rest = model(ids[:, :-1], cache=cache).logits.double().log_softmax(-1)
            logp = torch.cat([logp, rest.gather(2, ids[:, 1:, None])[..., 0]], dim=1)
        return logp.sum(dim=1).tolist()

    @torch.no_grad()
    def score(cases: list[NiahCase]) -> list[list[float]]:
        answers = [[tokenizer.encode(ANSWER.format(key=k)) for k in c.candidates] for c in cases]
        scores = [[0.0] * len(c.candidates) for c in cases]
        for group in _groups(range(len(cases)), lambda i: len(cases[i].prompt), batch_size):
            prompts = torch.tensor([cases[i].prompt for i in group], device=device)
            out = model(prompts, use_cache=True)
            first = out.logits[:, -1].double().log_softmax(-1)  # (b, V)
            pending = [(r, i, j) for r, i in enumerate(group) for j in range(len(answers[i]))]
            for rows in _groups(pending, lambda p: len(answers[p[1]][p[2]]), batch_size):
                at = [r for r, _, _ in rows]
                values = answer_log_likelihoods(
                    first[at], out.cache.select(at), [answers[i][j] for _, i, j in rows]
                )
                for (_, i, j), value in zip(rows, values, strict=True):
                    scores[i][j] = value
        return scores

    return score


def _groups(items: Iterable[T], key: Callable[[T], int], size: int) -> Iterator[list[T]]:
    """Items with one key together (first-seen order), in runs of at most `size`."""
    by_key: dict[int, list[T]] = {}
    for item in items:
        by_key.setdefault(key(item), []).append(item)
    for group in by_key.values():
        for start in range(0, len(group), size):
            yield group[start : start + size]


def rank_credit(scores: list[float], true_index: int) -> float:
    """1 / (candidates tied at the top score) when the true one is among them, else 0."""
    best = max(scores)
    if scores[true_index] < best:
        return 0.0
    return 1.0 / sum(score == best for score in scores)


def is_correct(answer: str, passkey: str) -> bool:
    """Exact match of the answer's leading digits (after optional whitespace) and the passkey."""
    match = _LEADING_DIGITS.match(answer)
    return match is not None and match.group(1) == passkey


def _cells(rows: list[NiahCaseRow], chance: float) -> list[NiahCell]:
    """Accuracy (mean credit) per (context, depth), in the rows' order."""
    grouped: dict[tuple[int, float], list[float]] = {}
    for r in rows:
        grouped.setdefault((r.context, r.depth), []).append(r.credit)
    return [
        NiahCell(
            role=rows[0].role,
            context=context,
            depth=depth,
            trials=len(credits),
            correct=sum(credits),
            accuracy=sum(credits) / len(credits),
            chance=chance,
        )
        for (context, depth), credits in grouped.items()
    ]


def _case_row(case: NiahCase, role: Role, answer: str, credit: float) -> NiahCaseRow:
    return NiahCaseRow(
        role=role,
        context=case.context,
        depth=case.depth,
        trial=case.trial,
        passkey=case.passkey,
        answer=answer,
        correct=credit == 1.0,
        credit=credit,
    )


def score_cases(
    cases: list[NiahCase], answers: list[str], role: Role = "model", chance: float = 0.0
) -> tuple[list[NiahCaseRow], list[NiahCell]]:
    """Greedy scoring: exact match of each answer text; rows and per-(context, depth) cells
    (`chance` is copied into the cells)."""
    if len(answers) != len(cases):
        raise ValueError(f"{len(answers)} answers for {len(cases)} cases")
    rows = [
        _case_row(c, role, a, float(is_correct(a, c.passkey)))
        for c, a in zip(cases, answers, strict=True)
    ]
    return rows, _cells(rows, chance)


def score_ranked(
    cases: list[NiahCase], scores: list[list[float]], role: Role = "model"
) -> tuple[list[NiahCaseRow], list[NiahCell]]:
    """Rank scoring: `rank_credit` of each case's candidate scores; chance = 1/candidates."""
    if len(scores) != len(cases) or any(
        len(s) != len(c.candidates) for s, c in zip(scores, cases, strict=True)
    ):
        raise ValueError("scores need one list per case with one score per candidate")
    chances = {1.0 / len(c.candidates) for c in cases}
    if len(chances) != 1:
        raise ValueError("every case of one evaluation needs the same number of candidates")
    rows = []
    for case, row_scores in zip(cases, scores, strict=True):
        top = case.candidates[row_scores.index(max(row_scores))]
        credit = rank_credit(row_scores, case.candidates.index(case.passkey))
        rows.append(_case_row(case, role, top, credit))
    return rows, _cells(rows, chances.pop())


def evaluate_niah(
    model: LoadedModel, config: NiahConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """Passkey accuracy of `model` (and `baseline`) by context length x depth, with its chance
    level and a 95% bootstrap interval over cases. Prompts are encoded with the shards'
    tokenizer copy, which every model must share."""
    ds = open_val(config.data, verify=config.verify_data)
    pairs = roles(model, baseline)
    for _, loaded in pairs:
        check_fits(ds, loaded)
    tokenizer = load_tokenizer(ds.directory / ds.manifest.tokenizer.dir)
    cases = build_cases(ds, tokenizer, config)
    chance = chance_level(config)
    # Room for the digits plus a leading space or punctuation piece.
    max_new_tokens = config.digits + 4
    case_rows, cells, metrics = [], [], {metric_key(EVAL, "chance"): chance}
    for role, loaded in pairs:
        if config.scoring == "rank":
            scorer = likelihood_scorer(loaded.model, tokenizer, config.batch_size)
            rows, role_cells = score_ranked(cases, scorer(cases), role)
        else:
            answer = greedy_answerer(loaded.model, tokenizer, max_new_tokens, config.batch_size)
            rows, role_cells = score_cases(cases, answer(cases), role, chance)
        case_rows += [r.model_dump() for r in rows]
        cells += [c.model_dump() for c in role_cells]
        credits = np.array([r.credit for r in rows])
        lo, hi = mean_interval(credits, config.bootstrap_samples, config.seed)
        metrics[metric_key(EVAL, role, "accuracy")] = float(credits.mean())
        metrics[metric_key(EVAL, role, "accuracy_lo")] = float(lo)
        metrics[metric_key(EVAL, role, "accuracy_hi")] = float(hi)
        for context in config.contexts:
            mine = [r.credit for r in rows if r.context == context]
            metrics[metric_key(EVAL, role, f"ctx_{context}", "accuracy")] = sum(mine) / len(mine)
    if config.scoring == "rank":
        how = (
            f"scoring rank: log-likelihood of {ANSWER.strip()!r} for the passkey and "
            f"{config.candidates - 1} random distractor keys; credit 1 when the passkey is the "
            f"most likely (1/m when m tie), chance {chance:.4g}"
        )
    else:
        how = (
            f"scoring greedy: {max_new_tokens} tokens generated greedily, exact match of the "
            f"answer's leading digits; chance {chance:.3g} (a uniformly guessed key)"
        )
    return EvalResult(
        eval=EVAL,
        device=describe_device(model_device(model.model)),
        models=[model_info(m, r) for r, m in pairs],
        config=config.model_dump(mode="json"),
        metrics=metrics,
        tables={"cells": cells, "cases": case_rows},
        notes=[
            "haystack = val-stream token ids (BOS/EOS/PAD removed) from a seeded offset; "
            f"needle {NEEDLE.strip()!r}, question {QUESTION.strip()!r}",
            how,
            f"{CONFIDENCE:.0%} interval of the accuracy: percentile bootstrap over cases, "
            f"{config.bootstrap_samples} resamples, seed {config.seed}",
        ],
    )


def summarize(result: EvalResult) -> str:
    """Accuracy table: one row per (role, depth), one column per context length; then each
    role's overall accuracy with its 95% interval against the chance level."""
    cells = [NiahCell.model_validate(c) for c in result.tables["cells"]]
    contexts = sorted({c.context for c in cells})
    table: dict[tuple[str, float], dict] = {}
    for c in cells:
        row = table.setdefault((c.role, c.depth), {"role": c.role, "depth": c.depth})
        row[str(c.context)] = c.accuracy
    lines = [text_table(list(table.values()), ["role", "depth", *map(str, contexts)])]
    chance = result.metrics[metric_key(EVAL, "chance")]
    for role in dict.fromkeys(c.role for c in cells):
        value = {
            name: result.metrics[metric_key(EVAL, role, name)]
            for name in ("accuracy", "accuracy_lo", "accuracy_hi")
        }
        interval = format_interval(value["accuracy_lo"], value["accuracy_hi"])
        lines.append(
            f"{role}: accuracy {value['accuracy']:.4g}, 95% CI {interval}, chance {chance:.4g}"
        )
    return "\n".join(lines)
