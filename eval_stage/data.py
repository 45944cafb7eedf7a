"""Validation data for the evals: a shard directory's val split, checked against a model.

The split's rows are consecutive, non-overlapping windows of one token stream (documents wrapped
in BOS/EOS and packed back to back, see `data_stage.packing`), so concatenating consecutive rows
gives back the stream exactly. Sequences longer than a row are cut from that stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_stage import DataStageError, ShardDataset, verify_shards

from .errors import EvalInputError
from .models import LoadedModel


def open_val(directory: Path | str, verify: bool = True) -> ShardDataset:
    """The val split of `directory`; refused when unreadable or empty, and with `verify` when
    its shards fail `verify_shards` (sha256, row length and ids against the tokenizer)."""
    try:
        ds = ShardDataset(directory, "val")
        problems = verify_shards(directory, splits=("val",)) if verify else []
    except DataStageError as e:
        raise EvalInputError(f"validation data: {e}") from e
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EvalInputError(
            f"validation data fails verification: {problems[0]}{more}; --no-verify-data skips "
            "the check"
        )
    if len(ds) == 0:
        raise EvalInputError(
            f"{directory}: the val split has no rows; rebuild the shards with a larger "
            "--val-fraction or more text"
        )
    return ds


def check_fits(ds: ShardDataset, loaded: LoadedModel) -> None:
    """The shards' ids must be in the model's vocabulary and, when the model carries a
    tokenizer, come from that tokenizer."""
    ref = ds.manifest.tokenizer
    if ref.vocab_size > loaded.config.vocab_size:
        raise EvalInputError(
            f"{ds.directory}: ids come from a {ref.vocab_size}-token vocabulary but the model "
            f"({loaded.info.get('source', 'model')}) has vocab_size {loaded.config.vocab_size}; "
            "evaluate on shards built with the model's tokenizer"
        )
    if loaded.tokenizer is not None and loaded.tokenizer.hash != ref.hash:
        raise EvalInputError(
            f"{ds.directory}: shards were built with tokenizer {ref.hash[:12]}, the model "
            f"({loaded.info.get('source', 'model')}) uses {loaded.tokenizer.hash[:12]}; "
            "evaluate on shards built with the model's tokenizer"
        )


def _rows(ds: ShardDataset, index: np.ndarray) -> np.ndarray:
    """`ds.get_many(index)`, refused when an id is outside the shards' vocabulary: damaged
    shards read with --no-verify-data end in one line, not an embedding IndexError."""
    rows = ds.get_many(index)
    vocab = ds.manifest.tokenizer.vocab_size
    if len(rows) and (rows.min() < 0 or rows.max() >= vocab):
        raise EvalInputError(
            f"{ds.directory}: val rows {index[0]}..{index[-1]} hold ids outside [0, {vocab}): "
            "the shards are damaged; check them with `python -m data_stage verify`"
        )
    return rows


def stream_length(ds: ShardDataset) -> int:
    """Tokens in the split's stream (whole rows; the packer's dropped tail is not there)."""
    return len(ds) * ds.row_len


def read_stream(ds: ShardDataset, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) of the split's stream, (length,) int32."""
    if start < 0 or start + length > stream_length(ds):
        raise IndexError(
            f"tokens [{start}, {start + length}) outside the {stream_length(ds)} of val"
        )
    first, last = start // ds.row_len, -(-(start + length) // ds.row_len)
    flat = _rows(ds, np.arange(first, last)).reshape(-1)
    offset = start - first * ds.row_len
    return flat[offset : offset + length]


def row_batches(
    ds: ShardDataset, batch_size: int, seq_len: int, max_batches: int | None
) -> Iterator[np.ndarray]:
    """Consecutive val rows cropped to `seq_len + 1` ids, (<= batch_size, seq_len + 1) int32."""
    n_batches = -(-len(ds) // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        index = np.arange(b * batch_size, min((b + 1) * batch_size, len(ds)))
        yield _rows(ds, index)[:, : seq_len + 1]


def long_sequences(ds: ShardDataset, length: int, count: int) -> np.ndarray:
    """`count` non-overlapping windows of `length + 1` consecutive stream tokens (so `length`
    predicted tokens each), from the start of the split: (count, length + 1) int32."""
    return read_stream(ds, 0, count * (length + 1)).reshape(count, length + 1)


def available_sequences(ds: ShardDataset, length: int) -> int:
    return stream_length(ds) // (length + 1)
