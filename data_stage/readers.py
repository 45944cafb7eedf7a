"""Per-format readers: plain text (optionally split at blank lines), JSONL and Parquet.

Non-UTF-8 policy: bytes are decoded with `errors="replace"` (each invalid sequence becomes
U+FFFD), never a crash; every affected document is counted in `CorpusStats.invalid_utf8_documents`
and the first few are logged as warnings naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from data_stage.errors import CorpusError

log = logging.getLogger(__name__)

_WARN_LIMIT = 5
# A paragraph boundary: a newline followed by one or more blank (whitespace-only) lines.
_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Document:
    """One unit of the corpus; `identity` is stable across machines and decides the split."""

    identity: str
    text: str


class CorpusStats(BaseModel):
    """Counts of one pass over a corpus; `sha256` covers every (identity, text) in order."""

    documents: int = 0
    bytes: int = 0
    invalid_utf8_documents: int = 0
    skipped_empty_records: int = 0
    sha256: str = ""

    def note_invalid(self, where: str) -> None:
        self.invalid_utf8_documents += 1
        if self.invalid_utf8_documents <= _WARN_LIMIT:
            log.warning("%s: invalid UTF-8 bytes replaced with U+FFFD", where)
        if self.invalid_utf8_documents == _WARN_LIMIT:
            log.warning("further invalid UTF-8 warnings suppressed; see invalid_utf8_documents")


def decode_utf8(data: bytes, where: str, stats: CorpusStats) -> str:
    """Decode by the module's non-UTF-8 policy (replace and count)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.note_invalid(where)
        return data.decode("utf-8", errors="replace")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CorpusError(
            f"{path}: cannot read ({e.strerror or e}); fix permissions or the corpus glob"
        ) from e


def split_paragraphs(text: str, doc_bytes: int) -> list[str]:
    """Cut `text` after blank-line runs into pieces of at least `doc_bytes` UTF-8 bytes.

    Paragraphs (each with its trailing blank lines) are grouped greedily until a group reaches
    `doc_bytes`; a paragraph longer than that stays whole; the last group takes what is left.
    Lossless: `"".join(pieces) == text`.
    """
    pieces: list[str] = []
    start = 0
    size = 0
    para_start = 0
    for match in _BLANK_LINES.finditer(text):
        size += len(text[para_start : match.end()].encode("utf-8"))
        para_start = match.end()
        if size >= doc_bytes:
            pieces.append(text[start:para_start])
            start = para_start
            size = 0
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def read_text(
    path: Path, identity: str, doc_bytes: int | None, stats: CorpusStats
) -> Iterator[Document]:
    """One document per file, or, for a file over `doc_bytes` bytes, one per paragraph group.

    Identities: `identity` for a whole file, `identity#<index>` (0-based) for its pieces.
    """
    data = _read_bytes(path)
    text = decode_utf8(data, str(path), stats)
    if not text.strip():
        raise CorpusError(f"{path}: empty file; delete it or narrow the corpus glob")
    if doc_bytes is None or len(data) <= doc_bytes:
        yield Document(identity, text)
        return
    for index, piece in enumerate(split_paragraphs(text, doc_bytes)):
        yield Document(f"{identity}#{index}", piece)


def _jsonl_text(record: object, field: str, where: str) -> str | None:
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        fields = ", ".join(sorted(record)[:10])
        raise CorpusError(f"{where}: no field {field!r} (fields: {fields}); pass --text-field")
    value = record[field]
    if value is not None and not isinstance(value, str):
        raise CorpusError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value


def read_jsonl(path: Path, identity: str, field: str, stats: CorpusStats) -> Iterator[Document]:
    """One document per non-blank line's `field`; identity `identity:<line number>` (1-based).

    Records whose field is null or "" are skipped and counted; a file with no document is an error.
    """
    found = False
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(decode_utf8(raw, where, stats))
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{where}: invalid JSON ({e.msg})") from e
                text = _jsonl_text(record, field, where)
                if not text:
                    stats.skipped_empty_records += 1
                    continue
                if _SURROGATE.search(text):
                    # JSON escapes can smuggle in lone surrogates, which are not valid UTF-8.
                    stats.note_invalid(where)
                    text = _SURROGATE.sub("\ufffd", text)
                found = True
                yield Document(f"{identity}:{lineno}", text)
    except OSError as e:
        raise CorpusError(
            f"{path}: cannot read ({e.strerror or e}); fix permissions or the corpus glob"
        ) from e
    if not found:
        raise CorpusError(
            f"{path}: no non-empty {field!r} values; delete it or narrow the corpus glob"
        )


def _parquet_file(path: Path, column: str) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from e
    schema = pf.schema_arrow
    if column not in schema.names:
        raise CorpusError(
            f"{path}: no column {column!r} (columns: {', '.join(schema.names[:10])}); pass --text-field"
        )
    kind = schema.field(column).type
    if not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        raise CorpusError(f"{path}: column {column!r} is {kind}, expected a string column")
    return pf


def read_parquet(path: Path, identity: str, column: str, stats: CorpusStats) -> Iterator[Document]:
    """One document per row's `column`; identity `identity:<row index>` (0-based).

    Null or empty values are skipped and counted; a file with no document is an error.
    """
    pf = _parquet_file(path, column)
    row = 0
    found = False
    try:
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            # Reading as binary lets the UTF-8 policy, not Arrow, decide about bad bytes.
            for value in batch.column(0).cast(pa.large_binary()).to_pylist():
                if value:
                    found = True
                    yield Document(
                        f"{identity}:{row}", decode_utf8(value, f"{path}:row {row}", stats)
                    )
                else:
                    stats.skipped_empty_records += 1
                row += 1
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"{path}: cannot read Parquet data ({e})") from e
    if not found:
        raise CorpusError(
            f"{path}: no non-empty {column!r} values; delete it or narrow the corpus glob"
        )
