"""Parallel document encoding: each worker process loads the tokenizer once; results come back
in submission order, so the output does not depend on the worker count.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

from data_stage.tokenizer import SentencePieceTokenizer

Meta = TypeVar("Meta")

# At most this many chunks per worker are submitted but not yet consumed (bounds memory).
_IN_FLIGHT_PER_WORKER = 4

_tokenizer: SentencePieceTokenizer | None = None


def _init_worker(model_bytes: bytes) -> None:
    global _tokenizer
    _tokenizer = SentencePieceTokenizer(model_bytes)


def encode_wrapped(tok: SentencePieceTokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids of every text as [BOS, ids..., EOS], (n,) int64 lengths)."""
    parts = []
    for text in texts:
        ids = tok.encode(text)
        wrapped = np.empty(len(ids) + 2, dtype=np.int32)
        wrapped[0] = tok.bos_id
        wrapped[1:-1] = ids
        wrapped[-1] = tok.eos_id
        parts.append(wrapped)
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    return np.concatenate(parts), lengths


def _task(task: tuple[list[str], Meta]) -> tuple[Meta, np.ndarray, np.ndarray]:
    texts, meta = task
    flat, lengths = encode_wrapped(_tokenizer, texts)
    return meta, flat, lengths


def encode_chunks(
    chunks: Iterable[tuple[list[str], Meta]], model_bytes: bytes, workers: int
) -> Iterator[tuple[Meta, np.ndarray, np.ndarray]]:
    """For each (texts, meta) chunk, in order: (meta, flat ids, per-text lengths).

    `workers == 1` encodes in this process; otherwise a spawn-context pool (safe in threaded
    callers such as Prefect) encodes ahead, at most 4 chunks per worker.
    """
    if workers == 1:
        tok = SentencePieceTokenizer(model_bytes)
        for texts, meta in chunks:
            yield (meta, *encode_wrapped(tok, texts))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(model_bytes,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_task, (chunk,)))
            if len(pending) >= _IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
