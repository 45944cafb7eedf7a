"""Pydantic configs shared by the CLIs and the Prefect flows: corpus, tokenizer, shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ttt_core.validation import ConfigModel

CorpusFormat = Literal["auto", "text", "jsonl", "parquet", "stdlib"]

MiB = 1 << 20


class CorpusConfig(ConfigModel):
    """Where the documents come from.

    `paths` are files, folders or globs (`**` allowed); empty means the embedded corpus (the
    running Python's standard library). `format="auto"` picks the reader per file by suffix:
    `.jsonl`/`.ndjson` → JSONL, `.parquet`/`.pq` → Parquet, anything else → plain text.
    """

    paths: list[str] = Field(
        default_factory=list,
        description="files, folders or globs (`**` allowed); empty: the embedded stdlib corpus",
    )
    format: CorpusFormat = Field(
        "auto", description="reader; auto picks one per file by suffix (.jsonl, .parquet, text)"
    )
    text_field: str = Field("text", min_length=1, description="JSONL field / Parquet column")
    max_bytes: int | None = Field(
        None,
        gt=0,
        description="stop before the first document that would exceed this many UTF-8 bytes",
    )
    doc_bytes: int | None = Field(
        64 * 1024,
        gt=0,
        description="plain-text files larger than this are split at blank lines into documents "
        "of about this many bytes; None keeps one document per file",
    )

    @model_validator(mode="after")
    def _check_format(self) -> CorpusConfig:
        if self.format == "stdlib" and self.paths:
            raise ValueError("format 'stdlib' is the embedded corpus and takes no paths")
        if self.format in ("text", "jsonl", "parquet") and not self.paths:
            raise ValueError(f"format '{self.format}' needs at least one path")
        # a changed value the format would ignore is refused; the default (as in a dump) is not
        defaults = type(self).model_fields
        if self.text_field != defaults["text_field"].default and self.format in ("text", "stdlib"):
            raise ValueError(f"text_field applies to JSONL/Parquet, not format '{self.format}'")
        if self.doc_bytes != defaults["doc_bytes"].default and self.format in (
            "jsonl",
            "parquet",
            "stdlib",
        ):
            raise ValueError(f"doc_bytes applies to plain text, not format '{self.format}'")
        return self


class TokenizerConfig(ConfigModel):
    """Train a SentencePiece tokenizer on `corpus` and write `out/tokenizer.{model,json}`."""

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    out: Path = Field(description="tokenizer directory to write")
    vocab_size: int = Field(gt=4, le=1 << 20, description="tokens in the vocabulary")
    model_type: Literal["bpe", "unigram"] = Field("bpe", description="SentencePiece algorithm")
    byte_fallback: bool = Field(
        True, description="unknown characters become UTF-8 byte tokens instead of <unk>"
    )
    seed: int = Field(0, ge=0, lt=1 << 32, description="seed of the sentence sampling")
    max_sentences: int = Field(
        2_000_000, gt=0, description="lines sampled (seeded reservoir) when the corpus has more"
    )


class ShardConfig(ConfigModel):
    """Tokenize `corpus` with `tokenizer` into packed Arrow shards of `seq_len + 1` ids under `out`."""

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: Path = Field(description="tokenizer directory (or a bare SentencePiece .model)")
    seq_len: int = Field(gt=0, lt=1 << 24, description="tokens predicted per row (rows hold +1)")
    out: Path = Field(description="shard directory to write")
    val_fraction: float = Field(
        0.02, ge=0.0, le=0.5, description="share of documents in the val split (by hash)"
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="encoding processes (default: the CPU count)",
    )
    max_shard_bytes: int = Field(256 * MiB, gt=0, description="size cap of one shard file")
    batch_bytes: int = Field(2 * MiB, gt=0, description="target Arrow record batch size")

    @model_validator(mode="after")
    def _check_sizes(self) -> ShardConfig:
        row_bytes = 4 * (self.seq_len + 1)
        if self.max_shard_bytes < row_bytes:
            raise ValueError(
                f"max_shard_bytes={self.max_shard_bytes} is smaller than one row "
                f"({row_bytes} bytes for seq_len={self.seq_len})"
            )
        return self
