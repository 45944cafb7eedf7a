"""Hash split rule and row packing."""

from __future__ import annotations

import numpy as np
import pytest

from data_stage import assign_splits, split_fraction
from data_stage.packing import RowPacker


def test_split_fraction_is_a_stable_function_of_identity() -> None:
    # sha256("a.txt")[:8] as a big-endian integer / 2**64, pinned so it never silently changes.
    assert split_fraction("a.txt") == pytest.approx(int("18b7cb099a9ea3f5", 16) / 2**64, abs=1e-15)
    values = [split_fraction(f"doc{i}") for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < float(np.mean(values)) < 0.55


def test_validation_set_does_not_move_when_documents_are_added() -> None:
    ids = [f"doc{i}.txt" for i in range(500)]
    before = assign_splits(np.array([split_fraction(i) for i in ids]), 0.1)
    more = ids + [f"new{i}.txt" for i in range(500)]
    after = assign_splits(np.array([split_fraction(i) for i in more]), 0.1)
    assert np.array_equal(after[:500], before)
    assert 20 < before.sum() < 80


def test_each_split_gets_a_document_when_there_are_two_or_more() -> None:
    assert assign_splits(np.array([0.7, 0.3, 0.9]), 0.01).tolist() == [False, True, False]
    assert assign_splits(np.array([0.2, 0.1]), 0.5).tolist() == [False, True]
    assert assign_splits(np.array([0.001]), 0.5).tolist() == [False]
    assert assign_splits(np.array([0.001, 0.002]), 0.0).tolist() == [False, False]


def packed(
    stream: np.ndarray, row_len: int, batch_rows: int, pieces: int
) -> tuple[list[np.ndarray], int]:
    blocks: list[np.ndarray] = []
    packer = RowPacker(row_len, batch_rows, lambda b: blocks.append(b.copy()))
    for part in np.array_split(stream, pieces):
        packer.add(part)
    return blocks, packer.finish()


@pytest.mark.parametrize(
    ("total", "row_len", "batch_rows", "pieces"),
    [(1000, 7, 3, 13), (70, 7, 10, 1), (5, 7, 2, 2), (700, 10, 7, 700)],
)
def test_packing_keeps_every_token_in_order_and_drops_only_the_tail(
    total: int, row_len: int, batch_rows: int, pieces: int
) -> None:
    stream = np.arange(total, dtype=np.int32)
    blocks, dropped = packed(stream, row_len, batch_rows, pieces)
    rows = np.concatenate(blocks) if blocks else np.empty((0, row_len), np.int32)
    assert rows.shape[1] == row_len and rows.dtype == np.int32
    assert dropped == total % row_len
    assert np.array_equal(np.concatenate([rows.reshape(-1), stream[total - dropped :]]), stream)
    # Every block is a full batch except the last.
    assert all(len(b) == batch_rows for b in blocks[:-1])
