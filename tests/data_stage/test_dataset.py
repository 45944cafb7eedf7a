"""Memory-mapped dataset: indexing, zero copy, and the errors for corrupt or foreign shards."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_stage import ShardDataset, ShardError, read_manifest, verify_shards
from data_stage.manifest import MANIFEST_FILE


@pytest.fixture
def shard_copy(tmp_path: Path, shard_dir: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(shard_dir, out)
    return out


def test_getitem_is_a_read_only_zero_copy_view(shard_dir: Path) -> None:
    ds = ShardDataset(shard_dir)
    row = ds[5]
    assert row.shape == (32,) and row.dtype == np.int32
    assert not row.flags.writeable and not row.flags.owndata
    assert ds[5].base is not None and np.shares_memory(ds[5], ds[5])
    assert np.array_equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_get_many_matches_getitem_across_shards_and_batches(shard_dir: Path) -> None:
    ds = ShardDataset(shard_dir)
    m = read_manifest(shard_dir)
    assert len(ds) == m.train.rows and len(ds) > 2 * 36
    idx = np.random.default_rng(0).integers(0, len(ds), size=200)
    many = ds.get_many(idx)
    assert many.shape == (200, 32) and many.dtype == np.int32 and many.flags.writeable
    assert np.array_equal(many, np.stack([ds[int(i)] for i in idx]))
    assert ds.get_many([]).shape == (0, 32)
    with pytest.raises(IndexError):
        ds.get_many([0, len(ds)])
    with pytest.raises(ValueError, match="1-D"):
        ds.get_many(np.zeros((2, 2), dtype=np.int64))


def test_val_split_and_seq_len(shard_dir: Path) -> None:
    val = ShardDataset(shard_dir, "val")
    assert len(val) == read_manifest(shard_dir).val.rows and val.seq_len == 31
    with pytest.raises(ValueError, match="split must be"):
        ShardDataset(shard_dir, "validation")  # type: ignore[arg-type]


def test_dataset_pickles_and_reopens_lazily(shard_dir: Path) -> None:
    ds = ShardDataset(shard_dir)
    first = ds[40].copy()
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[40], first)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_by_verify_naming_the_shard(shard_copy: Path) -> None:
    shard = shard_copy / "train-00001.arrow"
    flip_byte(shard, shard.stat().st_size // 2)
    ShardDataset(shard_copy)  # size still matches: only the sha256 check sees it
    with pytest.raises(
        ShardError,
        match=r"train-00001\.arrow: sha256 mismatch.*rebuild with `python -m data_stage shards",
    ):
        ShardDataset(shard_copy, verify=True)
    problems = verify_shards(shard_copy)
    assert len(problems) == 1 and "train-00001.arrow" in problems[0]


def test_truncated_or_missing_shard_fails_on_open(shard_copy: Path) -> None:
    shard = shard_copy / "train-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"train-00000\.arrow: \d+ bytes, manifest says"):
        ShardDataset(shard_copy)
    shard.unlink()
    with pytest.raises(ShardError, match=r"train-00000\.arrow: missing shard"):
        ShardDataset(shard_copy)


def test_wrong_tokenizer_hash_is_refused(shard_dir: Path) -> None:
    good = read_manifest(shard_dir).tokenizer.hash
    assert len(ShardDataset(shard_dir, tokenizer_hash=good)) > 0
    with pytest.raises(ShardError, match=r"built with tokenizer .* expected 000000000000"):
        ShardDataset(shard_dir, tokenizer_hash="0" * 64)


def test_tampered_tokenizer_copy_is_reported_by_verify(shard_copy: Path) -> None:
    flip_byte(shard_copy / "tokenizer" / "tokenizer.model", 100)
    problems = verify_shards(shard_copy)
    assert len(problems) == 1 and "tokenizer.model" in problems[0]


def test_manifest_missing_or_from_another_version_is_a_shard_error(shard_copy: Path) -> None:
    path = shard_copy / MANIFEST_FILE
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ShardError, match="format_version 99, this data_stage reads 1"):
        ShardDataset(shard_copy)
    path.unlink()
    with pytest.raises(ShardError, match=r"manifest\.json: cannot read"):
        ShardDataset(shard_copy)


def test_corrupt_arrow_metadata_raises_shard_error_on_read(shard_copy: Path) -> None:
    shard = shard_copy / "train-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-6:] = b"NOTARR"  # the trailing magic Arrow checks on open
    shard.write_bytes(bytes(data))
    ds = ShardDataset(shard_copy)
    with pytest.raises(ShardError, match=r"train-00000\.arrow: not a readable Arrow IPC file"):
        ds[0]


def test_importing_data_stage_does_not_import_torch() -> None:
    code = "import sys, data_stage, data_stage.__main__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
