"""Cache keys follow content: they change when what a stage reads changes, and only then."""

import json
import os
from pathlib import Path

import pytest
import torch

from data_stage import CorpusConfig, ShardConfig, TokenizerConfig
from flows import fingerprint
from flows.config import PipelineConfig
from flows.tasks import eval_key, shards_key, tokenizer_key, train_key
from ttt_core import TTTLM, ModelConfig


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusConfig:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta gamma\n")
    (folder / "b.txt").write_text("delta epsilon\n")
    return CorpusConfig(paths=[str(folder)])


def tok_key(corpus: CorpusConfig, tmp_path: Path, **kw) -> str:
    cfg = TokenizerConfig(corpus=corpus, out=tmp_path / "tok", vocab_size=64, **kw)
    return tokenizer_key(None, {"cfg": cfg})


def test_tokenizer_key_follows_corpus_bytes_not_mtimes(corpus, tmp_path):
    before = tok_key(corpus, tmp_path)
    assert tok_key(corpus, tmp_path) == before
    a = Path(corpus.paths[0]) / "a.txt"
    os.utime(a, (1, 1))  # touched, same bytes: a small corpus is hashed by content
    assert tok_key(corpus, tmp_path) == before
    a.write_text("alpha beta gamma!\n")
    assert tok_key(corpus, tmp_path) != before


def test_tokenizer_key_follows_the_config(corpus, tmp_path):
    assert tok_key(corpus, tmp_path) != tok_key(corpus, tmp_path, seed=1)


def test_large_corpus_is_keyed_by_size_and_mtime(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "HASH_CONTENT_BELOW", 1)
    before = tok_key(corpus, tmp_path)
    os.utime(Path(corpus.paths[0]) / "a.txt", (1, 1))
    assert tok_key(corpus, tmp_path) != before


def test_embedded_corpus_key_includes_the_python_version(monkeypatch):
    stdlib = CorpusConfig(format="stdlib")
    before = fingerprint.corpus_fingerprint(stdlib)
    assert fingerprint.corpus_fingerprint(stdlib) == before
    monkeypatch.setattr(fingerprint.platform, "python_version", lambda: "9.9.9")
    assert fingerprint.corpus_fingerprint(stdlib) != before


def test_shards_key_follows_the_tokenizer_hash_not_the_worker_count(corpus, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"hash": "h1"}))

    def key(**kw):
        cfg = ShardConfig(corpus=corpus, tokenizer=tok, seq_len=8, out=tmp_path / "s", **kw)
        return shards_key(None, {"cfg": cfg})

    before = key(workers=1)
    assert key(workers=4) == before
    (tok / "tokenizer.json").write_text(json.dumps({"hash": "h2"}))
    assert key(workers=1) != before


def test_train_key_follows_manifest_and_recipe_not_mlflow(tmp_path):
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path)
    shards = cfg.stage_dir("shards")
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text('{"v": 1}')
    train = cfg.train_config()

    def key(c, nproc=1):
        return train_key(None, {"cfg": c, "nproc": nproc})

    before = key(train)
    tracked = train.model_copy(update={"mlflow": train.mlflow.model_copy(update={"run_name": "x"})})
    assert key(tracked) == before
    assert key(train.model_copy(update={"steps": 21})) != before
    assert key(train, nproc=2) != before
    (shards / "manifest.json").write_text('{"v": 2}')
    assert key(train) != before


def test_eval_key_follows_the_exported_weights(tmp_path):
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path)
    export = tmp_path / "export"
    torch.manual_seed(0)
    TTTLM(ModelConfig.from_preset("debug_tiny")).save_pretrained(export)
    params = {
        "name": "latency",
        "model_dir": export,
        "cfg": cfg.latency,
        "baseline_dir": None,
        "out_dir": tmp_path / "eval",
    }
    before = eval_key(None, params)
    assert eval_key(None, params) == before
    TTTLM(ModelConfig.from_preset("debug_tiny")).save_pretrained(export, overwrite=True)
    assert eval_key(None, params) != before
