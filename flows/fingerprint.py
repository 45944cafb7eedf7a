"""Content fingerprints that the Prefect cache keys are built from (never bare path strings).

A key changes when what a stage reads changes: the corpus files, the tokenizer bytes, the shard
manifest, the stage's resolved config. It does not change when nothing it reads changed.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from data_stage import Corpus, CorpusConfig, ShardOutputs, TokenizerOutputs
from ttt_core import PretrainedOutputs, sha256_bytes, sha256_file

# User corpora up to this size are hashed byte by byte; larger ones by (path, size, mtime).
HASH_CONTENT_BELOW = 64 << 20


def digest(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (pydantic models dumped in JSON mode, keys sorted)."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(plain, sort_keys=True, default=str)
    return sha256_bytes(text.encode())


def corpus_fingerprint(cfg: CorpusConfig) -> str:
    """The embedded corpus: its file list with sizes and mtimes plus the Python version. A user
    corpus: the bytes of every file when small, else paths, sizes and mtimes."""
    files = Corpus(cfg).files
    stats = [(identity, str(path.resolve()), path.stat()) for identity, path in files]
    entries: list[Any]
    if not cfg.paths or sum(st.st_size for *_, st in stats) > HASH_CONTENT_BELOW:
        entries = [(i, p, st.st_size, st.st_mtime_ns) for i, p, st in stats]
    else:
        entries = [(i, sha256_file(Path(p))) for i, p, _ in stats]
    return digest(
        platform.python_version(), cfg.model_dump(mode="json", exclude_unset=True), entries
    )


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """The hash the tokenizer directory records (sha256 of its .model bytes)."""
    return TokenizerOutputs(tokenizer_dir).hash()


def manifest_sha256(shard_dir: Path) -> str:
    """sha256 of the shard manifest, which lists every shard's sha256 and the tokenizer hash."""
    return ShardOutputs(shard_dir).manifest_sha256()


def export_sha256(export_dir: Path) -> str:
    """Digest of everything in the export (weights, config, tokenizer): its checksums.json."""
    return PretrainedOutputs(export_dir).digest()
