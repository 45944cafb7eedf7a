"""`manifest.json` of a shard directory: what was built, from which tokenizer, and the shard hashes.

The manifest holds no paths outside the directory and no timestamps, so building twice from the
same inputs gives identical bytes. It is written last (atomically): a directory without one is
not a finished build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from data_stage.errors import ShardError
from data_stage.readers import CorpusStats

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
REBUILD_HINT = "rebuild with `python -m data_stage shards --tokenizer DIR --seq-len L --out DIR`"

Split = Literal["train", "val"]


class ShardInfo(BaseModel):
    """One Arrow IPC file: `rows` rows of `row_len` int32 ids."""

    file: str
    rows: int
    bytes: int
    sha256: str


class SplitInfo(BaseModel):
    """`tokens` counts every id of the split's stream (BOS/EOS included):
    `tokens == rows * row_len + dropped_tokens`."""

    documents: int
    tokens: int
    rows: int
    dropped_tokens: int
    shards: list[ShardInfo]


class TokenizerRef(BaseModel):
    """The tokenizer the ids come from; a copy lives in `<shard dir>/<dir>`."""

    hash: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    dir: str = "tokenizer"


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    seq_len: int
    row_len: int
    batch_rows: int
    val_fraction: float
    tokenizer: TokenizerRef
    corpus: CorpusStats
    train: SplitInfo
    val: SplitInfo

    def split(self, name: Split) -> SplitInfo:
        return {"train": self.train, "val": self.val}[name]


def manifest_bytes(manifest: Manifest) -> bytes:
    return (manifest.model_dump_json(indent=2) + "\n").encode("utf-8")


def read_manifest(directory: Path | str) -> Manifest:
    """Parse and version-check `<directory>/manifest.json`; `ShardError` when unusable."""
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ShardError(f"{path}: cannot read ({e.strerror or e}); {REBUILD_HINT}") from e
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not JSON ({e}); {REBUILD_HINT}") from e
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format_version {version}, this data_stage reads {FORMAT_VERSION}; {REBUILD_HINT}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ShardError(
            f"{path}: invalid manifest ({e.error_count()} errors); {REBUILD_HINT}"
        ) from e
