"""`niah`: needle-in-a-haystack passkey retrieval, in three separable steps.

1. `build_cases`: for each (context length, depth, trial) a prompt of exactly `context` tokens:
   `[BOS] haystack[:k] NEEDLE haystack[k:] QUESTION`, k = round(depth x haystack length). The
   haystack is token ids taken directly from the val stream (no decode/re-encode round trip), from
   a seeded random offset, with BOS/EOS/PAD removed so the prompt reads as one document.
   The passkey is `digits` random digits (first one non-zero). Everything derives from
   `random.Random("niah:<seed>:<context>:<depth>:<trial>")`: same seed, same prompts.
2. Answering: an `Answerer` maps cases to continuation texts; `greedy_answerer` generates
   greedily with the model (stubs stand in for it in tests).
3. `score_cases`: exact match — the answer's leading digits (after optional whitespace) must
   equal the passkey; accuracy per (context, depth) cell.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel
from torch import nn

from data_stage import ShardDataset, Tokenizer, load_tokenizer
from ttt_core import generate

from .config import NiahConfig
from .data import check_fits, open_val, read_stream, stream_length
from .device import describe_device, model_device
from .errors import EvalInputError
from .models import LoadedModel, model_info, roles
from .results import EvalResult, Role, metric_key, text_table

EVAL = "niah"
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is"
_LEADING_DIGITS = re.compile(r"\s*(\d+)")


@dataclass(frozen=True)
class NiahCase:
    context: int  # prompt length in tokens
    depth: float
    trial: int
    passkey: str
    needle_at: int  # index in `prompt` of the needle's first token
    prompt: list[int]


Answerer = Callable[[list[NiahCase]], list[str]]


class NiahCaseRow(BaseModel):
    role: Role
    context: int
    depth: float
    trial: int
    passkey: str
    answer: str
    correct: bool


class NiahCell(BaseModel):
    role: Role
    context: int
    depth: float
    trials: int
    correct: int
    accuracy: float


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
                key = str(rng.randint(1, 9)) + "".join(
                    str(rng.randint(0, 9)) for _ in range(config.digits - 1)
                )
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
                cases.append(NiahCase(context, depth, trial, key, 1 + at, prompt))
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


def is_correct(answer: str, passkey: str) -> bool:
    """Exact match of the answer's leading digits (after optional whitespace) and the passkey."""
    match = _LEADING_DIGITS.match(answer)
    return match is not None and match.group(1) == passkey


def score_cases(
    cases: list[NiahCase], answers: list[str], role: Role = "model"
) -> tuple[list[NiahCaseRow], list[NiahCell]]:
    """Per-case rows and per-(context, depth) accuracy cells, in the cases' grid order."""
    if len(answers) != len(cases):
        raise ValueError(f"{len(answers)} answers for {len(cases)} cases")
    rows = [
        NiahCaseRow(
            role=role,
            context=c.context,
            depth=c.depth,
            trial=c.trial,
            passkey=c.passkey,
            answer=a,
            correct=is_correct(a, c.passkey),
        )
        for c, a in zip(cases, answers, strict=True)
    ]
    grouped: dict[tuple[int, float], list[bool]] = {}
    for r in rows:
        grouped.setdefault((r.context, r.depth), []).append(r.correct)
    cells = [
        NiahCell(
            role=role,
            context=context,
            depth=depth,
            trials=len(hits),
            correct=sum(hits),
            accuracy=sum(hits) / len(hits),
        )
        for (context, depth), hits in grouped.items()
    ]
    return rows, cells


def evaluate_niah(
    model: LoadedModel, config: NiahConfig, baseline: LoadedModel | None = None
) -> EvalResult:
    """Passkey accuracy of `model` (and `baseline`) by context length x depth. Prompts are
    encoded with the shards' tokenizer copy, which every model must share."""
    ds = open_val(config.data, verify=config.verify_data)
    pairs = roles(model, baseline)
    for _, loaded in pairs:
        check_fits(ds, loaded)
    tokenizer = load_tokenizer(ds.directory / ds.manifest.tokenizer.dir)
    cases = build_cases(ds, tokenizer, config)
    # Room for the digits plus a leading space or punctuation piece.
    max_new_tokens = config.digits + 4
    case_rows, cells, metrics = [], [], {}
    for role, loaded in pairs:
        answer = greedy_answerer(loaded.model, tokenizer, max_new_tokens, config.batch_size)
        rows, role_cells = score_cases(cases, answer(cases), role)
        case_rows += [r.model_dump() for r in rows]
        cells += [c.model_dump() for c in role_cells]
        metrics[metric_key(EVAL, role, "accuracy")] = sum(r.correct for r in rows) / len(rows)
        for context in config.contexts:
            hits = [r.correct for r in rows if r.context == context]
            metrics[metric_key(EVAL, role, f"ctx_{context}", "accuracy")] = sum(hits) / len(hits)
    return EvalResult(
        eval=EVAL,
        device=describe_device(model_device(model.model)),
        models=[model_info(m, r) for r, m in pairs],
        config=config.model_dump(mode="json"),
        metrics=metrics,
        tables={"cells": cells, "cases": case_rows},
        notes=[
            "haystack = val-stream token ids (BOS/EOS/PAD removed) from a seeded offset; "
            f"needle {NEEDLE.strip()!r}, question {QUESTION.strip()!r}; greedy decoding of "
            f"{max_new_tokens} tokens; exact match of the answer's leading digits"
        ],
    )


def summarize(result: EvalResult) -> str:
    """Accuracy table: one row per (role, depth), one column per context length."""
    cells = [NiahCell.model_validate(c) for c in result.tables["cells"]]
    contexts = sorted({c.context for c in cells})
    table: dict[tuple[str, float], dict] = {}
    for c in cells:
        row = table.setdefault((c.role, c.depth), {"role": c.role, "depth": c.depth})
        row[str(c.context)] = c.accuracy
    return text_table(list(table.values()), ["role", "depth", *map(str, contexts)])
