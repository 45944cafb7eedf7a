"""Pack a token stream into rows of exactly `row_len` ids, emitted in batches of rows.

Tail policy: the final partial row (fewer than `row_len` ids) is dropped; `finish()` returns
how many ids that was, and the manifest records it per split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class RowPacker:
    """Concatenates int32 arrays and calls `emit` with (batch_rows, row_len) int32 blocks.

    Every emitted block has `batch_rows` rows except the one emitted by `finish()`, which has
    fewer (and is skipped when empty). Concatenating all emitted rows plus the dropped tail
    reproduces the input stream exactly.
    """

    def __init__(self, row_len: int, batch_rows: int, emit: Callable[[np.ndarray], None]) -> None:
        self.row_len = row_len
        self.batch_tokens = row_len * batch_rows
        self.emit = emit
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, tokens: np.ndarray) -> None:
        self._parts.append(tokens)
        self._count += len(tokens)
        if self._count < self.batch_tokens:
            return
        flat = np.concatenate(self._parts)
        full = len(flat) - len(flat) % self.batch_tokens
        for start in range(0, full, self.batch_tokens):
            self.emit(flat[start : start + self.batch_tokens].reshape(-1, self.row_len))
        rest = flat[full:]
        self._parts, self._count = [rest], len(rest)

    def finish(self) -> int:
        """Emit the remaining whole rows; return the number of dropped tail ids."""
        flat = np.concatenate(self._parts) if self._parts else np.empty(0, np.int32)
        rows = len(flat) // self.row_len
        if rows:
            self.emit(flat[: rows * self.row_len].reshape(rows, self.row_len))
        self._parts, self._count = [], 0
        return len(flat) - rows * self.row_len
