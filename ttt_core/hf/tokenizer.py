"""The tokenizer of an export as a transformers tokenizer.

An export's `tokenizer/` holds `tokenizer.model` (SentencePiece) and data_stage's own
`tokenizer.json` (provenance, NOT transformers' fast-tokenizer file of that name, which is why
`AutoTokenizer.from_pretrained(export_dir / "tokenizer")` fails). `load_tokenizer` wraps the
.model in transformers' `SentencePieceBackend`, which runs SentencePiece itself: the same ids as
`data_stage.load_tokenizer(...).encode` (no BOS is added), with the model's special tokens.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from transformers import SentencePieceBackend

from ..pretrained import TOKENIZER_DIR

MODEL_FILE = "tokenizer.model"


def load_tokenizer(path: Path | str) -> SentencePieceBackend:
    """A transformers tokenizer from an export directory, its `tokenizer/` directory or a
    SentencePiece `.model` file."""
    path = Path(path)
    candidates = [path, path / MODEL_FILE, path / TOKENIZER_DIR / MODEL_FILE]
    model_file = next((p for p in candidates if p.is_file()), None)
    if model_file is None:
        raise FileNotFoundError(
            f"{path}: no SentencePiece model ({MODEL_FILE} or {TOKENIZER_DIR}/{MODEL_FILE})"
        )
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    special = {
        name: sp.id_to_piece(index)
        for name, index in (
            ("unk_token", sp.unk_id()),
            ("bos_token", sp.bos_id()),
            ("eos_token", sp.eos_id()),
            ("pad_token", sp.pad_id()),
        )
        if index >= 0  # SentencePiece marks an absent special token with -1
    }
    return SentencePieceBackend(vocab_file=str(model_file), **special)
