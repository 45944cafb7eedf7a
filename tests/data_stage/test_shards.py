"""Shard building: determinism, packing of the real token stream, manifest, atomic rebuilds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from data_stage_testing import shard_config, write_docs
from pydantic import ValidationError

from data_stage import (
    Corpus,
    CorpusConfig,
    CorpusError,
    ShardDataset,
    assign_splits,
    build_shards,
    load_tokenizer,
    read_manifest,
    split_fraction,
)
from data_stage.manifest import MANIFEST_FILE


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_two_builds_are_byte_identical_also_across_worker_counts(
    tmp_path: Path,
    docs_dir: Path,
    tokenizer_dir: Path,
    shard_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small chunks so both workers get several tasks.
    monkeypatch.setattr("data_stage.shards._CHUNK_BYTES", 600)
    build_shards(shard_config(docs_dir, tokenizer_dir, tmp_path / "w2", workers=2))
    build_shards(shard_config(docs_dir, tokenizer_dir, tmp_path / "w1", workers=1))
    reference = tree_digest(shard_dir)
    assert tree_digest(tmp_path / "w1") == reference
    assert tree_digest(tmp_path / "w2") == reference
    assert "manifest.json" in reference and "train-00001.arrow" in reference


def test_manifest_counts_are_consistent(shard_dir: Path, tokenizer_dir: Path) -> None:
    m = read_manifest(shard_dir)
    tok = load_tokenizer(tokenizer_dir)
    assert (m.seq_len, m.row_len, m.batch_rows) == (31, 32, 12)
    assert (m.tokenizer.hash, m.tokenizer.vocab_size) == (tok.hash, tok.vocab_size)
    assert (m.tokenizer.bos_id, m.tokenizer.eos_id, m.tokenizer.pad_id) == (1, 2, 3)
    assert m.corpus.documents == 40 == m.train.documents + m.val.documents
    assert m.val.documents >= 1
    for split in (m.train, m.val):
        assert split.tokens == split.rows * m.row_len + split.dropped_tokens
        assert 0 <= split.dropped_tokens < m.row_len
        assert split.rows == sum(s.rows for s in split.shards)
        for shard in split.shards:
            path = shard_dir / shard.file
            assert path.stat().st_size == shard.bytes
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
    # Every shard but the last holds max_shard_bytes // row bytes rounded to whole batches.
    assert [s.rows for s in m.train.shards[:-1]] == [36] * (len(m.train.shards) - 1)
    assert [s.file for s in m.train.shards][:2] == ["train-00000.arrow", "train-00001.arrow"]
    assert not list(shard_dir.glob(".*.tmp"))


def test_shard_file_is_uncompressed_arrow_ipc_with_fixed_size_rows(shard_dir: Path) -> None:
    m = read_manifest(shard_dir)
    with pa.memory_map(str(shard_dir / m.train.shards[0].file)) as source:
        reader = pa.ipc.open_file(source)
        assert str(reader.schema.field("tokens").type) == "fixed_size_list<item: int32>[32]"
        assert [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)] == [
            12,
            12,
            12,
        ]


def test_rows_reproduce_the_bos_eos_wrapped_stream_of_each_split(
    shard_dir: Path, docs_dir: Path, tokenizer_dir: Path
) -> None:
    tok = load_tokenizer(tokenizer_dir)
    docs = list(Corpus(CorpusConfig(paths=[str(docs_dir)])))
    is_val = assign_splits(np.array([split_fraction(d.identity) for d in docs]), 0.1)
    m = read_manifest(shard_dir)
    for split, want_val in (("train", False), ("val", True)):
        stream = np.array(
            [
                t
                for d, v in zip(docs, is_val, strict=True)
                if v == want_val
                for t in [1, *tok.encode(d.text), 2]
            ],
            dtype=np.int32,
        )
        ds = ShardDataset(shard_dir, split)
        rows = ds.get_many(np.arange(len(ds)))
        kept = len(ds) * m.row_len
        assert len(stream) == m.split(split).tokens == kept + m.split(split).dropped_tokens
        assert np.array_equal(rows.reshape(-1), stream[:kept])
        assert m.split(split).documents == int((is_val == want_val).sum())


def test_rebuild_replaces_the_previous_build_and_removes_stale_shards(
    tmp_path: Path, docs_dir: Path, tokenizer_dir: Path
) -> None:
    out = tmp_path / "out"
    big = build_shards(shard_config(docs_dir, tokenizer_dir, out))
    small_corpus = tmp_path / "small"
    write_docs(small_corpus, 8)
    small = build_shards(shard_config(small_corpus, tokenizer_dir, out))
    assert len(small.train.shards) < len(big.train.shards)
    names = {p.name for p in out.glob("*.arrow")}
    assert names == {s.file for s in small.train.shards + small.val.shards}
    assert read_manifest(out) == small


def test_failed_build_writes_nothing(tmp_path: Path, docs_dir: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(CorpusError, match="corpus too small"):
        build_shards(
            shard_config(
                docs_dir, tokenizer_dir, tmp_path / "new", seq_len=100_000, max_shard_bytes=1 << 20
            )
        )
    assert not (tmp_path / "new").exists()
    bad = tmp_path / "bad"
    write_docs(bad, 3)
    (bad / "zz-empty.txt").write_text("")
    with pytest.raises(CorpusError, match=r"zz-empty\.txt: empty file"):
        build_shards(shard_config(bad, tokenizer_dir, tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_failed_rebuild_leaves_the_previous_build_intact(
    tmp_path: Path, docs_dir: Path, tokenizer_dir: Path
) -> None:
    out = tmp_path / "out"
    build_shards(shard_config(docs_dir, tokenizer_dir, out))
    before = tree_digest(out)
    with pytest.raises(CorpusError, match="corpus too small"):
        build_shards(
            shard_config(docs_dir, tokenizer_dir, out, seq_len=100_000, max_shard_bytes=1 << 20)
        )
    assert tree_digest(out) == before


def test_single_large_text_file_still_gets_a_validation_split(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    book = "\n\n".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 4 for i in range(200)
    )
    (tmp_path / "book.txt").write_text(book)
    cfg = shard_config(tmp_path / "book.txt", tokenizer_dir, tmp_path / "out", val_fraction=0.05)
    cfg = cfg.model_copy(
        update={"corpus": CorpusConfig(paths=[str(tmp_path / "book.txt")], doc_bytes=4000)}
    )
    m = build_shards(cfg)
    assert m.corpus.documents > 10
    assert m.val.documents >= 1 and m.val.rows >= 1


def test_shard_dir_carries_a_verified_copy_of_the_tokenizer(
    shard_dir: Path, tokenizer_dir: Path
) -> None:
    assert load_tokenizer(shard_dir / "tokenizer").hash == load_tokenizer(tokenizer_dir).hash
    assert (shard_dir / "tokenizer" / "tokenizer.json").read_bytes() == (
        tokenizer_dir / "tokenizer.json"
    ).read_bytes()


def test_manifest_has_no_absolute_paths(shard_dir: Path) -> None:
    text = (shard_dir / MANIFEST_FILE).read_text()
    assert str(shard_dir.parent) not in text and "/" not in text


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"seq_len": 0}, "seq_len"),
        ({"val_fraction": 0.9}, "val_fraction"),
        ({"workers": 0}, "workers"),
        ({"max_shard_bytes": 64}, "max_shard_bytes"),
    ],
)
def test_bad_shard_config_names_the_field(tmp_path: Path, fields: dict, name: str) -> None:
    with pytest.raises(ValidationError, match=name):
        shard_config(tmp_path, tmp_path, tmp_path / "out", **fields)


def test_single_document_goes_to_train_and_val_is_empty(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    write_docs(tmp_path / "one", 1)
    m = build_shards(shard_config(tmp_path / "one", tokenizer_dir, tmp_path / "out", seq_len=8))
    assert (m.train.documents, m.val.documents, m.val.rows, m.val.shards) == (1, 0, 0, [])
    val = ShardDataset(tmp_path / "out", "val")
    assert len(val) == 0 and val.get_many([]).shape == (0, 9)
