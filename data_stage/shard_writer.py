"""Arrow IPC shard files: schema, layout and the per-split writer.

A shard `<split>-NNNNN.arrow` is an uncompressed Arrow IPC file with one non-null column
`tokens: fixed_size_list<int32>[row_len]`. Every record batch has `batch_rows` rows except the
last one of a shard, and every shard has `shard_rows` rows except the last one of a split, so a
row's (shard, batch, offset) follows from its index by arithmetic.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_stage.manifest import ShardInfo
from ttt_core.files import fsync_and_replace, sha256_file, temp_path

TOKEN_COLUMN = "tokens"


def shard_schema(row_len: int) -> pa.Schema:
    return pa.schema([pa.field(TOKEN_COLUMN, pa.list_(pa.int32(), row_len), nullable=False)])


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


def shard_layout(row_len: int, batch_bytes: int, max_shard_bytes: int) -> tuple[int, int]:
    """(batch_rows, shard_rows): batches of about `batch_bytes`, shards a whole number of
    batches and at most `max_shard_bytes` of ids (Arrow adds under 1 KiB of framing per batch)."""
    row_bytes = 4 * row_len
    shard_rows = max(1, max_shard_bytes // row_bytes)
    batch_rows = min(max(1, batch_bytes // row_bytes), shard_rows)
    return batch_rows, shard_rows - shard_rows % batch_rows


class SplitWriter:
    """Writes (n, row_len) int32 blocks of one split as shards under hidden temp names.

    Nothing is visible under the final names until `commit()`; `discard()` removes the temps.
    """

    def __init__(self, directory: Path, split: str, row_len: int, shard_rows: int) -> None:
        self.directory = directory
        self.split = split
        self.schema = shard_schema(row_len)
        self.row_len = row_len
        self.shard_rows = shard_rows
        self.shards: list[ShardInfo] = []
        self._temps: list[Path] = []
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._rows = 0

    def write(self, rows: np.ndarray) -> None:
        """Append rows (each block becomes one record batch, split only at shard boundaries)."""
        while len(rows):
            if self._writer is None:
                self._open()
            take = min(len(rows), self.shard_rows - self._rows)
            ids = np.ascontiguousarray(rows[:take], dtype=np.int32)
            # from_buffers, unlike pa.array, wraps the memory without importing pandas.
            values = pa.Array.from_buffers(pa.int32(), ids.size, [None, pa.py_buffer(ids)])
            column = pa.FixedSizeListArray.from_arrays(values, self.row_len)
            self._writer.write_batch(pa.record_batch([column], schema=self.schema))
            self._rows += take
            rows = rows[take:]
            if self._rows == self.shard_rows:
                self._close()

    def _open(self) -> None:
        tmp = temp_path(self.directory / shard_name(self.split, len(self._temps)))
        self._temps.append(tmp)
        self._sink = pa.OSFile(str(tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._rows = 0

    def _close(self) -> None:
        self._writer.close()
        self._sink.close()
        tmp = self._temps[-1]
        name = shard_name(self.split, len(self._temps) - 1)
        self.shards.append(
            ShardInfo(file=name, rows=self._rows, bytes=tmp.stat().st_size, sha256=sha256_file(tmp))
        )
        self._writer = self._sink = None

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; return every shard's info (names are the final ones)."""
        if self._writer is not None:
            self._close()
        return self.shards

    def commit(self) -> None:
        """Rename the finished temp files to their final names."""
        for tmp, info in zip(self._temps, self.shards, strict=True):
            fsync_and_replace(tmp, self.directory / info.file)

    def discard(self) -> None:
        """Remove every temp file, even when closing the open one fails (a full disk cannot
        take the file's footer): the unlinks are what frees the space."""
        writer, sink = self._writer, self._sink
        self._writer = self._sink = None
        try:
            if writer is not None:
                with contextlib.suppress(OSError, pa.ArrowException):
                    writer.close()
                with contextlib.suppress(OSError, pa.ArrowException):
                    sink.close()
        finally:
            for tmp in self._temps:
                tmp.unlink(missing_ok=True)
