"""`TokenizerOutputs` / `ShardOutputs`: a step's files and whether they are whole, judged by
data_stage's own checks (the tokenizer hash, each shard's recorded size)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_stage import ShardOutputs, TokenizerOutputs, read_manifest


def test_a_tokenizer_is_complete_until_its_model_changes_or_goes(tokenizer_dir, tmp_path):
    tok = TokenizerOutputs(shutil.copytree(tokenizer_dir, tmp_path / "tok"))
    assert tok.complete() and [p.name for p in tok.files] == ["tokenizer.model", "tokenizer.json"]
    assert tok.hash() == json.loads((tokenizer_dir / "tokenizer.json").read_text())["hash"]
    model = tok.files[0]
    model.write_bytes(model.read_bytes() + b"\0")
    assert not tok.complete()
    model.unlink()
    assert not tok.complete()
    assert not TokenizerOutputs(tmp_path / "nothing").complete()


def test_shards_are_complete_until_a_shard_changes_size_or_goes(shard_dir: Path, tmp_path):
    shards = ShardOutputs(shutil.copytree(shard_dir, tmp_path / "shards"))
    manifest = read_manifest(shards.dir)
    listed = [s.file for split in (manifest.train, manifest.val) for s in split.shards]
    assert shards.complete()
    assert [p.name for p in shards.files] == ["manifest.json", *listed]
    assert shards.tokenizer.complete()
    first = shards.dir / listed[0]
    first.write_bytes(first.read_bytes()[:-1])
    assert not shards.complete()
    first.unlink()
    assert not shards.complete()
    assert not ShardOutputs(tmp_path / "nothing").complete()


def test_the_manifest_digest_follows_its_bytes(shard_dir: Path, tmp_path):
    shards = ShardOutputs(shutil.copytree(shard_dir, tmp_path / "shards"))
    before = shards.manifest_sha256()
    assert before == ShardOutputs(shard_dir).manifest_sha256()
    shards.manifest_file.write_text(shards.manifest_file.read_text() + " ")
    assert shards.manifest_sha256() != before
