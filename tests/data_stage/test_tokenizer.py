"""Tokenizer: deterministic training, exact round trip, the directory's hash check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from data_stage_testing import SMALL_STDLIB, UNICODE_LINES
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from data_stage import (
    CorpusConfig,
    Tokenizer,
    TokenizerConfig,
    TokenizerError,
    load_tokenizer,
    train_tokenizer,
)
from data_stage.tokenizer import INFO_FILE, MODEL_FILE, read_tokenizer_info
from data_stage.tokenizer_train import sample_lines


def test_training_twice_gives_identical_model_bytes(tmp_path: Path, tokenizer_dir: Path) -> None:
    info = train_tokenizer(
        TokenizerConfig(corpus=SMALL_STDLIB, out=tmp_path / "again", vocab_size=400)
    )
    assert (tmp_path / "again" / MODEL_FILE).read_bytes() == (
        tokenizer_dir / MODEL_FILE
    ).read_bytes()
    assert (tmp_path / "again" / INFO_FILE).read_bytes() == (tokenizer_dir / INFO_FILE).read_bytes()
    assert info.hash == load_tokenizer(tokenizer_dir).hash


def test_unigram_training_is_deterministic_with_sampled_sentences(tmp_path: Path) -> None:
    def train(out: str) -> bytes:
        cfg = TokenizerConfig(
            corpus=CorpusConfig(max_bytes=100_000),
            out=tmp_path / out,
            vocab_size=350,
            model_type="unigram",
            max_sentences=300,
            seed=7,
        )
        info = train_tokenizer(cfg)
        assert info.training is not None and info.training.sentences == 300
        return (tmp_path / out / MODEL_FILE).read_bytes()

    assert train("a") == train("b")


def test_sample_lines_is_seeded_and_keeps_all_lines_under_the_cap() -> None:
    texts = [f"line {i}\n\n  \nmore {i}" for i in range(100)]
    assert sample_lines(texts, 1000, seed=0) == [
        x for i in range(100) for x in (f"line {i}", f"more {i}")
    ]
    a, b, c = (sample_lines(texts, 20, seed=s) for s in (1, 1, 2))
    assert a == b and a != c and len(a) == 20


def test_directory_holds_model_and_info_with_special_ids(tokenizer_dir: Path) -> None:
    info = read_tokenizer_info(tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir)
    assert isinstance(tok, Tokenizer)
    assert (info.unk_id, info.bos_id, info.eos_id, info.pad_id) == (0, 1, 2, 3)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 400)
    assert info.training is not None and info.training.model_type == "bpe"
    assert info.training.corpus.bytes <= 120_000


def test_round_trip_on_unicode_text_and_code(tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    for text in [*UNICODE_LINES, "def f(x):\n\tif  x:\n        return 'ok'  \n\n", "", "\r\n\x00"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


# Text is Unicode scalar values: a lone surrogate (category Cs) cannot come out of a UTF-8 file
# and SentencePiece cannot take one (seen as a random failure on '\ud800').
@settings(max_examples=60, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=60)
)
def test_round_trip_on_arbitrary_text(tokenizer_dir: Path, text: str) -> None:
    tok = load_tokenizer(tokenizer_dir)
    assert tok.decode(tok.encode(text)) == text


def test_bare_model_file_loads_with_the_same_hash(tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir / MODEL_FILE)
    assert tok.hash == load_tokenizer(tokenizer_dir).hash


def test_json_hash_not_matching_the_model_is_an_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_dir, broken)
    info = json.loads((broken / INFO_FILE).read_text())
    info["hash"] = "0" * 64
    (broken / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(
        TokenizerError, match=r"tokenizer\.model: sha256 .* does not match tokenizer\.json"
    ):
        load_tokenizer(broken)


def test_missing_or_garbage_tokenizer_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no such tokenizer directory"):
        load_tokenizer(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot read"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "junk.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")


def test_vocab_too_large_for_the_corpus_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text("a b c d e f g\n" * 3)
    cfg = TokenizerConfig(
        corpus=CorpusConfig(paths=[str(tmp_path / "tiny.txt")]),
        out=tmp_path / "out",
        vocab_size=5000,
        model_type="unigram",
    )
    with pytest.raises(TokenizerError, match="sentencepiece training failed"):
        train_tokenizer(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"model_type": "wordpiece"}, "model_type"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_tokenizer_config_names_the_field(tmp_path: Path, fields: dict, name: str) -> None:
    with pytest.raises(ValidationError, match=name):
        TokenizerConfig(out=tmp_path, **{"vocab_size": 400, **fields})
