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
from flows.train_run import claim_run_dir, train_run_key
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
    info = {"hash": "h1", "vocab_size": 8, "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
    (tok / "tokenizer.json").write_text(json.dumps(info))

    def key(**kw):
        cfg = ShardConfig(corpus=corpus, tokenizer=tok, seq_len=8, out=tmp_path / "s", **kw)
        return shards_key(None, {"cfg": cfg})

    before = key(workers=1)
    assert key(workers=4) == before
    (tok / "tokenizer.json").write_text(json.dumps({**info, "hash": "h2"}))
    assert key(workers=1) != before


OPERATIONAL_CHANGES = {
    "save_every": 3,
    "log_every": 2,
    "eval_every": 4,
    "eval_batches": 9,
    "keep_last": 1,
    "stats_every": 0,
    "verify_data": False,
    "strategy": "fsdp",
}


@pytest.fixture
def train_cfg(tmp_path):
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path)
    shards = cfg.stage_dir("shards")
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text('{"v": 1}')
    return cfg.train_config()


def test_train_key_follows_manifest_identity_and_world_not_operational_fields(train_cfg):
    def key(c, nproc=1):
        return train_key(None, {"cfg": c, "nproc": nproc})

    before = key(train_cfg)
    operational = train_cfg.model_copy(
        update={
            **OPERATIONAL_CHANGES,
            "mlflow": train_cfg.mlflow.model_copy(update={"run_name": "x"}),
            "model": train_cfg.model.model_copy(update={"checkpoint_n_chunks": 2}),
        }
    )
    assert key(operational) == before
    assert key(train_cfg.model_copy(update={"steps": 21})) != before
    assert key(train_cfg.model_copy(update={"lr": 1e-4})) != before
    eta = train_cfg.model.model_copy(update={"eta_base": 0.1})
    assert key(train_cfg.model_copy(update={"model": eta})) != before
    assert key(train_cfg, nproc=2) != before
    # stop_at ends an invocation early: another cached result, the same run
    stopped = train_cfg.model_copy(update={"stop_at": 5})
    assert key(stopped) != before
    assert train_run_key(stopped, 1) == train_run_key(train_cfg, 1)
    (train_cfg.data / "manifest.json").write_text('{"v": 2}')
    assert key(train_cfg) != before


def test_a_run_dir_is_kept_for_operational_changes_and_moved_aside_for_identity(train_cfg):
    run_dir = train_cfg.run_dir
    moved = []
    claim_run_dir(run_dir, train_run_key(train_cfg, 1), False, moved.append)
    (run_dir / "checkpoints").mkdir()  # what a partial run leaves
    operational = train_cfg.model_copy(update=OPERATIONAL_CHANGES)
    claim_run_dir(run_dir, train_run_key(operational, 1), False, moved.append)
    assert (run_dir / "checkpoints").is_dir() and moved == []  # resumed, not retrained
    other = train_cfg.model_copy(update={"seed": 1})
    claim_run_dir(run_dir, train_run_key(other, 1), False, moved.append)
    assert not (run_dir / "checkpoints").exists() and len(moved) == 1
    (replaced,) = (run_dir.parent / ".replaced").iterdir()
    assert (replaced / "checkpoints").is_dir()


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
