"""Session fixtures of the fault suite: a small tokenizer and shard set, a second (different)
shard set, and one finished debug_tiny run (checkpoints at steps 2 and 4) that tests copy before
they damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_stage import CorpusConfig, ShardConfig, TokenizerConfig, build_shards, train_tokenizer
from train_stage.cli import main as train_main

from .helpers import TRAIN, NoCapture, run_main

CORPUS = CorpusConfig(format="stdlib", max_bytes=300_000)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults_tok") / "tokenizer"
    train_tokenizer(TokenizerConfig(corpus=CORPUS, out=out, vocab_size=512))
    return out


def _shards(out: Path, tokenizer: Path, val_fraction: float) -> Path:
    config = ShardConfig(corpus=CORPUS, tokenizer=tokenizer, seq_len=32, out=out,
                         val_fraction=val_fraction, workers=1)  # fmt: skip
    build_shards(config)
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory, tokenizer: Path) -> Path:
    return _shards(tmp_path_factory.mktemp("faults_data") / "shards", tokenizer, 0.1)


@pytest.fixture(scope="session")
def other_shards(tmp_path_factory: pytest.TempPathFactory, tokenizer: Path) -> Path:
    """Other data for the same model: another split of the same corpus."""
    return _shards(tmp_path_factory.mktemp("faults_data") / "other", tokenizer, 0.3)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("faults_run") / "run"
    code, _, _ = run_main(
        train_main, [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir)], NoCapture()
    )
    assert code == 0
    return run_dir


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy
