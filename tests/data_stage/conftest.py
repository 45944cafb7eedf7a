"""Small corpora, a tokenizer and shard directories shared by the data_stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_stage_testing import SMALL_STDLIB, shard_config, write_docs

from data_stage import TokenizerConfig, build_shards, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(TokenizerConfig(corpus=SMALL_STDLIB, out=out, vocab_size=400))
    return out


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    write_docs(folder, 40)
    return folder


@pytest.fixture(scope="session")
def shard_dir(
    tmp_path_factory: pytest.TempPathFactory, docs_dir: Path, tokenizer_dir: Path
) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    build_shards(shard_config(docs_dir, tokenizer_dir, out))
    return out
