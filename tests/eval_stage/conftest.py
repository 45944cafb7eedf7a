"""Session fixtures: a tiny tokenizer, shards with a val split, and exported debug_tiny models
(TTT and attention) with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_stage import CorpusConfig, ShardConfig, TokenizerConfig, build_shards, train_tokenizer

from .helpers import VOCAB, tiny_model, write_export

# The first ~120 KB of the embedded stdlib corpus: real text, built in a few seconds.
CORPUS = CorpusConfig(max_bytes=120_000)
SEQ_LEN = 32


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_tok") / "tokenizer"
    train_tokenizer(TokenizerConfig(corpus=CORPUS, out=out, vocab_size=VOCAB))
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("eval_shards") / "shards"
    config = ShardConfig(corpus=CORPUS, tokenizer=tokenizer_dir, seq_len=SEQ_LEN, out=out,
                         val_fraction=0.3, workers=1)  # fmt: skip
    build_shards(config)
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return write_export(
        tiny_model("ttt_linear"), tmp_path_factory.mktemp("m") / "ttt", tokenizer_dir
    )


@pytest.fixture(scope="session")
def baseline_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("m") / "attention"
    return write_export(tiny_model("attention"), out, tokenizer_dir)
