"""The `Tokenizer` protocol, its SentencePiece implementation and the tokenizer directory.

A tokenizer directory holds `tokenizer.model` (SentencePiece bytes) and `tokenizer.json`
(`TokenizerInfo`: ids, vocab size, training settings and `hash` = sha256 of the .model bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import sentencepiece as spm
from pydantic import BaseModel, ValidationError

from data_stage.errors import TokenizerError
from data_stage.readers import CorpusStats
from stage_common.faults import NoSpaceError, is_no_space
from ttt_core.files import fsync_and_replace, sha256_bytes, temp_path

MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"
FORMAT_VERSION = 1
RETRAIN_HINT = "train one with `python -m data_stage tokenizer --vocab-size N --out DIR`"


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the pipeline needs from a tokenizer; ids are in [0, vocab_size)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def hash(self) -> str: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class TrainingInfo(BaseModel):
    """How a tokenizer was trained (absent for an imported .model)."""

    model_type: Literal["bpe", "unigram"]
    byte_fallback: bool
    seed: int
    max_sentences: int
    sentences: int
    corpus: CorpusStats


class TokenizerInfo(BaseModel):
    """Contents of `tokenizer.json`."""

    format_version: int = FORMAT_VERSION
    hash: str
    vocab_size: int
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    training: TrainingInfo | None = None


class SentencePieceTokenizer:
    """A loaded SentencePiece model; `hash` is the sha256 of its serialized bytes.

    Round trip `decode(encode(s)) == s` holds for models trained by `train_tokenizer` (identity
    normalization, no dummy prefix, byte fallback) except for the character U+2581 "▁", which
    SentencePiece uses for spaces and decodes as " ".
    """

    def __init__(self, model_bytes: bytes, source: str = "<bytes>") -> None:
        self.model_bytes = model_bytes
        self._hash = sha256_bytes(model_bytes)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except (RuntimeError, OSError, ValueError) as e:
            raise TokenizerError(
                f"{source}: not a SentencePiece model ({e}); {RETRAIN_HINT}"
            ) from e
        for name in ("bos", "eos", "pad"):
            if getattr(self._sp, f"{name}_id")() < 0:
                raise TokenizerError(f"{source}: the model has no {name} piece; {RETRAIN_HINT}")

    @classmethod
    def from_file(cls, path: Path) -> SentencePieceTokenizer:
        return cls(_read_model(path), str(path))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def hash(self) -> str:
        return self._hash

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without BOS/EOS."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; control ids (BOS, EOS, PAD) decode to nothing."""
        return self._sp.decode(ids.tolist() if isinstance(ids, np.ndarray) else list(ids))

    def info(self, training: TrainingInfo | None = None) -> TokenizerInfo:
        return TokenizerInfo(
            hash=self.hash,
            vocab_size=self.vocab_size,
            unk_id=self.unk_id,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            training=training,
        )


def info_json(info: TokenizerInfo) -> bytes:
    """`tokenizer.json` bytes (fixed field order, so identical settings give identical bytes)."""
    return (info.model_dump_json(indent=2) + "\n").encode("utf-8")


def write_tokenizer_dir(out: Path, model_bytes: bytes, info_bytes: bytes) -> None:
    """Write `out/tokenizer.model` and `out/tokenizer.json`. Both go to temp names first and
    are renamed only when both are written, so a full disk leaves a previous tokenizer whole
    (a `NoSpaceError` then, the temps removed)."""
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / MODEL_FILE, model_bytes), (out / INFO_FILE, info_bytes)]
    try:
        for path, data in files:
            temp_path(path).write_bytes(data)
        for path, _ in files:
            fsync_and_replace(temp_path(path), path)
    except OSError as e:
        if is_no_space(e):
            raise NoSpaceError(
                out, len(model_bytes) + len(info_bytes), "free space and rerun"
            ) from e
        raise
    finally:
        for path, _ in files:
            temp_path(path).unlink(missing_ok=True)


def copy_tokenizer(source: Path | str, out: Path) -> SentencePieceTokenizer:
    """Copy the tokenizer directory `source` to `out` (created) after checking it loads and its
    hash matches; return it. A missing or damaged source raises `TokenizerError` naming it."""
    source = Path(source)
    if not source.is_dir():
        raise TokenizerError(f"{source}: no such tokenizer directory; {RETRAIN_HINT}")
    tokenizer = load_tokenizer(source)
    write_tokenizer_dir(Path(out), tokenizer.model_bytes, info_json(read_tokenizer_info(source)))
    return tokenizer


def read_tokenizer_info(directory: Path) -> TokenizerInfo:
    path = Path(directory) / INFO_FILE
    try:
        return TokenizerInfo.model_validate_json(path.read_bytes())
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e}); {RETRAIN_HINT}") from e
    except ValidationError as e:
        raise TokenizerError(
            f"{path}: invalid tokenizer info ({e.error_count()} errors); {RETRAIN_HINT}"
        ) from e


def _read_model(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror or e}); {RETRAIN_HINT}") from e


def load_tokenizer(path: Path | str) -> SentencePieceTokenizer:
    """Load a tokenizer directory (checking its json hash against the .model) or a bare .model."""
    path = Path(path)
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such tokenizer directory or .model file; {RETRAIN_HINT}")
    return SentencePieceTokenizer(checked_model_bytes(path), str(path / MODEL_FILE))


def checked_model_bytes(directory: Path) -> bytes:
    """The `.model` bytes of a tokenizer directory, after checking `tokenizer.json` (readable,
    this format version) and that its hash is the sha256 of those bytes; `TokenizerError`
    naming the file otherwise. Does not parse the model (`load_tokenizer` does)."""
    info = read_tokenizer_info(directory)
    if info.format_version != FORMAT_VERSION:
        raise TokenizerError(
            f"{directory / INFO_FILE}: format_version {info.format_version}, this data_stage "
            f"reads {FORMAT_VERSION}; {RETRAIN_HINT}"
        )
    model_bytes = _read_model(directory / MODEL_FILE)
    digest = sha256_bytes(model_bytes)
    if digest != info.hash:
        raise TokenizerError(
            f"{directory / MODEL_FILE}: sha256 {digest[:12]} does not match {INFO_FILE} hash "
            f"{info.hash[:12]} (changed, or from another training); {RETRAIN_HINT}"
        )
    return model_bytes
