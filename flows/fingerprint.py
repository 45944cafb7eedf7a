"""Content fingerprints that the Prefect cache keys are built from (never bare path strings).

A key changes when what a stage reads changes: the corpus files, the tokenizer bytes, the shard
manifest, the stage's resolved config. It does not change when nothing it reads changed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from data_stage import Corpus, CorpusConfig
from ttt_core.files import directory_digest, sha256_file

# User corpora up to this size are hashed byte by byte; larger ones by (path, size, mtime).
HASH_CONTENT_BELOW = 64 << 20


def digest(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (pydantic models dumped in JSON mode, keys sorted)."""
    plain = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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
    """The `hash` recorded in `tokenizer.json` (sha256 of the .model bytes)."""
    return json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["hash"]


def manifest_sha256(shard_dir: Path) -> str:
    """sha256 of `manifest.json`, which lists every shard's sha256 and the tokenizer hash."""
    return sha256_file(Path(shard_dir) / "manifest.json")


def export_sha256(export_dir: Path) -> str:
    """Digest of everything in the export (weights, config, tokenizer): its checksums.json."""
    return directory_digest(Path(export_dir))
