"""What a data_stage step leaves on disk, as objects that know their files and whether they are
whole: the flow (or anyone caching a step) asks these instead of reading file names itself.

`complete()` is the cheap check a cache uses before trusting an earlier result, made with this
package's own rules: a tokenizer's `.model` against the hash in its `tokenizer.json`
(`checked_model_bytes`), a shard directory's manifest and each shard's recorded size
(`shard_file_problem`, without rehashing; `verify_shards` is the full check).
"""

from __future__ import annotations

from pathlib import Path

from data_stage.dataset import shard_file_problem
from data_stage.errors import DataStageError
from data_stage.manifest import MANIFEST_FILE, Manifest, read_manifest
from data_stage.tokenizer import INFO_FILE, MODEL_FILE, checked_model_bytes, read_tokenizer_info
from ttt_core.files import sha256_file


class TokenizerOutputs:
    """A tokenizer directory (`train_tokenizer`'s output): `tokenizer.model`, `tokenizer.json`."""

    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.files = [self.dir / MODEL_FILE, self.dir / INFO_FILE]

    def complete(self) -> bool:
        """Both files present, `tokenizer.json` valid and its hash that of the `.model` bytes."""
        try:
            checked_model_bytes(self.dir)
        except DataStageError:
            return False
        return True

    def hash(self) -> str:
        """The sha256 of the `.model` bytes, as `tokenizer.json` records it (`TokenizerError`
        when that file is missing or invalid)."""
        return read_tokenizer_info(self.dir).hash


class ShardOutputs:
    """A shard directory (`build_shards`' output): `manifest.json`, the Arrow shards it lists
    and the copy of the tokenizer the ids come from."""

    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.manifest_file = self.dir / MANIFEST_FILE

    @property
    def files(self) -> list[Path]:
        """The manifest, then every shard it lists (`ShardError` when it is unreadable)."""
        manifest = self.manifest()
        shards = [s for split in ("train", "val") for s in manifest.split(split).shards]
        return [self.manifest_file, *(self.dir / s.file for s in shards)]

    def manifest(self) -> Manifest:
        return read_manifest(self.dir)

    @property
    def tokenizer(self) -> TokenizerOutputs:
        """The tokenizer copy beside the shards (the one the manifest names)."""
        return TokenizerOutputs(self.dir / self.manifest().tokenizer.dir)

    def complete(self) -> bool:
        """The manifest reads and every shard it lists is present with its recorded size."""
        try:
            manifest = self.manifest()
        except DataStageError:
            return False
        return all(
            shard_file_problem(self.dir / shard.file, shard, sha256=False) is None
            for split in ("train", "val")
            for shard in manifest.split(split).shards
        )

    def manifest_sha256(self) -> str:
        """sha256 of `manifest.json`, which lists every shard's sha256 and the tokenizer hash:
        it changes when any of them does."""
        return sha256_file(self.manifest_file)
