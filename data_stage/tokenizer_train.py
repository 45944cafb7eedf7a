"""Train a SentencePiece tokenizer deterministically: same corpus + config → same .model bytes.

Input: the corpus split into lines (blank lines dropped). When there are more than
`max_sentences` lines, a reservoir sample of that many is drawn with `random.Random(seed)`
(SentencePiece's own sampling is not reproducible). Training is single-threaded because
SentencePiece's result depends on its thread count. Normalization is identity, with no dummy
prefix and no whitespace collapsing, so code and unicode round-trip exactly; digits are split.
Ids: unk 0, bos 1, eos 2, pad 3. Lines longer than 64 KiB are skipped by SentencePiece.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable

import sentencepiece as spm

from data_stage.config import TokenizerConfig
from data_stage.corpus import Corpus
from data_stage.errors import TokenizerError
from data_stage.tokenizer import (
    SentencePieceTokenizer,
    TokenizerInfo,
    TrainingInfo,
    info_json,
    write_tokenizer_dir,
)
from stage_common.faults import output_dir_problem

_MAX_SENTENCE_BYTES = 1 << 16


def sample_lines(documents: Iterable[str], max_lines: int, seed: int) -> list[str]:
    """Non-blank lines of `documents`: all of them in order, or a seeded reservoir sample."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for text in documents:
        for line in text.split("\n"):
            if not line.strip():
                continue
            if seen < max_lines:
                sample.append(line)
            else:
                slot = rng.randrange(seen + 1)
                if slot < max_lines:
                    sample[slot] = line
            seen += 1
    return sample


def _train_sentencepiece(lines: list[str], cfg: TokenizerConfig) -> bytes:
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            byte_fallback=cfg.byte_fallback,
            character_coverage=0.9995,
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"sentencepiece training failed (vocab_size={cfg.vocab_size}, {len(lines)} lines): "
            f"{e}; adjust --vocab-size or the corpus"
        ) from e
    return model.getvalue()


def train_tokenizer(cfg: TokenizerConfig) -> TokenizerInfo:
    """Train on `cfg.corpus`, write `cfg.out/tokenizer.{model,json}`, return the json's content.

    Nothing is written when the corpus or the training fails.
    """
    problem = output_dir_problem(cfg.out)
    if problem:
        raise TokenizerError(f"{problem}; pass another --out")
    corpus = Corpus(cfg.corpus)
    lines = sample_lines((doc.text for doc in corpus), cfg.max_sentences, cfg.seed)
    model_bytes = _train_sentencepiece(lines, cfg)
    tokenizer = SentencePieceTokenizer(model_bytes, "trained model")
    training = TrainingInfo(
        model_type=cfg.model_type,
        byte_fallback=cfg.byte_fallback,
        seed=cfg.seed,
        max_sentences=cfg.max_sentences,
        sentences=len(lines),
        corpus=corpus.stats,
    )
    info = tokenizer.info(training)
    write_tokenizer_dir(cfg.out, model_bytes, info_json(info))
    return info
