"""Is a stage's output on disk and whole? The flow asks before trusting a cached task result."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from data_stage import read_manifest
from ttt_core import is_pretrained
from ttt_core.files import sha256_file


def tokenizer_ok(tokenizer_dir: Path) -> bool:
    """`tokenizer.model` present and matching the hash in `tokenizer.json`."""
    model, info = tokenizer_dir / "tokenizer.model", tokenizer_dir / "tokenizer.json"
    if not (model.is_file() and info.is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("hash") == sha256_file(model)
    except ValueError:
        return False


def shards_ok(shard_dir: Path) -> bool:
    """The manifest reads and every shard it lists has its recorded size (no full rehash)."""
    try:
        manifest = read_manifest(shard_dir)
    except (OSError, ValueError):
        return False
    shards = [s for split in ("train", "val") for s in manifest.split(split).shards]
    return all(
        (shard_dir / s.file).is_file() and (shard_dir / s.file).stat().st_size == s.bytes
        for s in shards
    )


def train_ok(train_dir: Path) -> bool:
    """`train_summary.json` says completed and its checkpoint still exists."""
    summary = train_dir / "train_summary.json"
    if not summary.is_file():
        return False
    try:
        record = json.loads(summary.read_text())
    except ValueError:
        return False
    checkpoint = record.get("checkpoint")
    return record.get("status") == "completed" and bool(checkpoint) and Path(checkpoint).is_dir()


def export_ok(export_dir: Path) -> bool:
    """Every file of the model format is present (loading verifies their checksums)."""
    return is_pretrained(export_dir)


def results_ok(out_dir: Path, stems: Iterable[str]) -> bool:
    """Every `<stem>.json` an eval writes is present."""
    return all((out_dir / f"{stem}.json").is_file() for stem in stems)
