"""Memory-mapped, zero-copy reading of a shard directory, and its full verification.

Shards are opened lazily with `pa.memory_map` + `pa.ipc.open_file`; each record batch, on
first use, becomes a read-only (batch_rows, row_len) int32 numpy view over the mapped file and
stays cached, so random access is index arithmetic plus a row copy (or no copy for `ds[i]`).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_stage.errors import ShardError, TokenizerError
from data_stage.manifest import (
    MANIFEST_FILE,
    REBUILD_HINT,
    Manifest,
    ShardInfo,
    Split,
    read_manifest,
)
from data_stage.shard_writer import shard_schema
from data_stage.tokenizer import load_tokenizer
from ttt_core.files import sha256_file


def shard_file_problem(path: Path, shard: ShardInfo, sha256: bool) -> str | None:
    """A problem with one shard file, or None when it matches the manifest."""
    if not path.is_file():
        return f"{path}: missing shard; {REBUILD_HINT}"
    size = path.stat().st_size
    if size != shard.bytes:
        return f"{path}: {size} bytes, manifest says {shard.bytes} (truncated or replaced); {REBUILD_HINT}"
    if sha256:
        digest = sha256_file(path)
        if digest != shard.sha256:
            return (
                f"{path}: sha256 mismatch (manifest {shard.sha256[:12]}, file {digest[:12]}), "
                f"the shard is corrupt; {REBUILD_HINT}"
            )
    return None


def _check_content(
    path: Path, shard: ShardInfo, row_len: int, vocab_size: int | None
) -> str | None:
    """A problem with the rows inside one shard: their length, their count, and (when the
    tokenizer is known) ids outside its vocabulary. None when all is well."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        field = reader.schema.field(0)
        actual = getattr(field.type, "list_size", None)
        if not reader.schema.equals(shard_schema(actual or row_len)) or actual != row_len:
            return (
                f"{path}: rows of {actual} ids ({reader.schema.types[0]}), the manifest says "
                f"row_len {row_len}; {REBUILD_HINT}"
            )
        rows, low, high = 0, 0, 0
        for index in range(reader.num_record_batches):
            ids = reader.get_batch(index).column(0).flatten().to_numpy(zero_copy_only=True)
            rows += len(ids) // row_len
            if len(ids):
                low, high = min(low, int(ids.min())), max(high, int(ids.max()))
    except (OSError, pa.ArrowException, IndexError) as e:
        return f"{path}: not a readable Arrow IPC file ({e}); {REBUILD_HINT}"
    if rows != shard.rows:
        return f"{path}: {rows} rows, the manifest says {shard.rows}; {REBUILD_HINT}"
    if vocab_size is not None and (low < 0 or high >= vocab_size):
        return (
            f"{path}: token ids span [{low}, {high}], outside the tokenizer's vocabulary "
            f"[0, {vocab_size}); {REBUILD_HINT}"
        )
    return None


def _check_manifest(manifest: Manifest, splits: Sequence[Split], where: Path) -> list[str]:
    """The manifest's own numbers must agree with each other (an edited field shows here)."""
    problems = []
    if manifest.row_len != manifest.seq_len + 1:
        problems.append(
            f"{where}: row_len {manifest.row_len} is not seq_len {manifest.seq_len} + 1 "
            f"(edited?); {REBUILD_HINT}"
        )
    for name in splits:
        split = manifest.split(name)
        listed = sum(shard.rows for shard in split.shards)
        if (
            listed != split.rows
            or split.tokens != split.rows * manifest.row_len + split.dropped_tokens
        ):
            problems.append(
                f"{where}: the {name} split's counts disagree (rows {split.rows}, shards hold "
                f"{listed}, tokens {split.tokens}, dropped {split.dropped_tokens}; edited?); "
                f"{REBUILD_HINT}"
            )
    return problems


def _check_tokenizer(directory: Path, manifest: Manifest) -> tuple[int | None, list[str]]:
    """(the tokenizer copy's vocabulary size, or None when it does not load; its problems)."""
    tok_dir = directory / manifest.tokenizer.dir
    try:
        tokenizer = load_tokenizer(tok_dir)
    except TokenizerError as e:
        return None, [str(e)]
    ref = manifest.tokenizer
    if tokenizer.hash != ref.hash:
        return tokenizer.vocab_size, [
            f"{tok_dir}: tokenizer copy does not match the manifest hash; {REBUILD_HINT}"
        ]
    actual = (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    if actual != (ref.vocab_size, ref.bos_id, ref.eos_id, ref.pad_id):
        return tokenizer.vocab_size, [
            f"{directory / MANIFEST_FILE}: tokenizer fields (vocab_size, bos, eos, pad) = "
            f"{(ref.vocab_size, ref.bos_id, ref.eos_id, ref.pad_id)} but the tokenizer has "
            f"{actual} (edited?); {REBUILD_HINT}"
        ]
    return tokenizer.vocab_size, []


def verify_shards(directory: Path | str, splits: Sequence[Split] = ("train", "val")) -> list[str]:
    """Full check of a shard directory (or of some of its splits): the manifest's numbers
    against each other and the tokenizer copy; every shard's size and sha256; and inside each
    shard, the actual row length and row count against the manifest and the token ids against
    the tokenizer's vocabulary size (read from the tokenizer model, not from the manifest).

    Returns one message per problem (empty when all is well); raises `ShardError` when the
    manifest itself is missing or unreadable.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    vocab_size, problems = _check_tokenizer(directory, manifest)
    problems += _check_manifest(manifest, splits, directory / MANIFEST_FILE)
    for split in splits:
        for shard in manifest.split(split).shards:
            path = directory / shard.file
            problem = shard_file_problem(path, shard, sha256=True) or _check_content(
                path, shard, manifest.row_len, vocab_size
            )
            if problem:
                problems.append(problem)
    return problems


class ShardDataset:
    """The rows of one split: `ds[i]` is a read-only (seq_len + 1,) int32 view, i in [0, len).

    Opening reads `manifest.json`, checks its format version, the tokenizer hash when
    `tokenizer_hash` is given, and each shard's presence and size; `verify=True` also checks
    each shard's sha256. Problems raise `ShardError` naming the shard.
    """

    def __init__(
        self,
        directory: Path | str,
        split: Split = "train",
        *,
        tokenizer_hash: str | None = None,
        verify: bool = False,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.directory = Path(directory)
        self.split = split
        self.manifest: Manifest = read_manifest(self.directory)
        if tokenizer_hash is not None and tokenizer_hash != self.manifest.tokenizer.hash:
            raise ShardError(
                f"{self.directory}: shards were built with tokenizer {self.manifest.tokenizer.hash[:12]}, "
                f"expected {tokenizer_hash[:12]}; {REBUILD_HINT} using the expected tokenizer"
            )
        self.shards = self.manifest.split(split).shards
        for shard in self.shards:
            problem = shard_file_problem(self.directory / shard.file, shard, sha256=verify)
            if problem:
                raise ShardError(problem)
        self.row_len = self.manifest.row_len
        self.batch_rows = self.manifest.batch_rows
        rows = np.array([s.rows for s in self.shards], dtype=np.int64)
        self._shard_starts = np.concatenate([[0], np.cumsum(rows)])
        self._shard_starts_list = self._shard_starts.tolist()
        batches = -(-rows // self.batch_rows)
        self._batch_starts = np.concatenate([[0], np.cumsum(batches)])
        self._len = int(self._shard_starts[-1])
        self._reset_cache()

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    def __len__(self) -> int:
        return self._len

    def _reset_cache(self) -> None:
        self._readers: list[pa.ipc.RecordBatchFileReader | None] = [None] * len(self.shards)
        self._views: list[np.ndarray | None] = [None] * int(self._batch_starts[-1])

    def __getstate__(self) -> dict:
        # Mapped files do not pickle; a copy (e.g. in a DataLoader worker) re-opens lazily.
        state = self.__dict__.copy()
        del state["_readers"], state["_views"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    def _reader(self, shard: int) -> pa.ipc.RecordBatchFileReader:
        reader = self._readers[shard]
        if reader is not None:
            return reader
        path = self.directory / self.shards[shard].file
        expected = int(self._batch_starts[shard + 1] - self._batch_starts[shard])
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (OSError, pa.ArrowException) as e:
            raise ShardError(f"{path}: not a readable Arrow IPC file ({e}); {REBUILD_HINT}") from e
        if not reader.schema.equals(shard_schema(self.row_len)):
            raise ShardError(
                f"{path}: schema {reader.schema} is not tokens[{self.row_len}]; {REBUILD_HINT}"
            )
        if reader.num_record_batches != expected:
            raise ShardError(
                f"{path}: {reader.num_record_batches} record batches, expected {expected}; {REBUILD_HINT}"
            )
        self._readers[shard] = reader
        return reader

    def _load_view(self, shard: int, batch: int) -> np.ndarray:
        path = self.directory / self.shards[shard].file
        shard_rows = self.shards[shard].rows
        expected = min(self.batch_rows, shard_rows - batch * self.batch_rows)
        try:
            column = self._reader(shard).get_batch(batch).column(0)
            flat = column.flatten().to_numpy(zero_copy_only=True)
        except (OSError, pa.ArrowException) as e:
            raise ShardError(
                f"{path}: cannot read record batch {batch} ({e}); {REBUILD_HINT}"
            ) from e
        if len(column) != expected:
            raise ShardError(
                f"{path}: record batch {batch} has {len(column)} rows, expected {expected}; {REBUILD_HINT}"
            )
        view = flat.reshape(expected, self.row_len)
        self._views[int(self._batch_starts[shard]) + batch] = view
        return view

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) int64 global row indices → (shard, batch within shard, row within batch)."""
        shard = np.searchsorted(self._shard_starts, indices, side="right") - 1
        batch, row = np.divmod(indices - self._shard_starts[shard], self.batch_rows)
        return shard, batch, row

    def __getitem__(self, index: int) -> np.ndarray:
        index = operator.index(index)
        if not -self._len <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} rows of {self.split}")
        index %= self._len
        shard = bisect.bisect_right(self._shard_starts_list, index) - 1
        batch, row = divmod(index - self._shard_starts_list[shard], self.batch_rows)
        view = self._views[int(self._batch_starts[shard]) + batch]
        if view is None:
            view = self._load_view(shard, batch)
        return view[row]

    def get_many(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Rows at `indices` (1-D, each in [0, len)) → new (n, seq_len + 1) int32 array."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        out = np.empty((len(idx), self.row_len), dtype=np.int32)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= self._len:
            raise IndexError(f"indices outside [0, {self._len}) for {self.split}")
        shard, batch, row = self._locate(idx)
        views = self._views
        flat_batch = self._batch_starts[shard] + batch
        for k, (g, s, b, r) in enumerate(
            zip(flat_batch.tolist(), shard.tolist(), batch.tolist(), row.tolist(), strict=True)
        ):
            view = views[g]
            if view is None:
                view = self._load_view(s, b)
            out[k] = view[r]
        return out
