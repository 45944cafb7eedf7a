"""The corpus: resolve paths/globs (or the embedded stdlib corpus) into a stream of `Document`s.

Embedded corpus: the non-empty `.py` files of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`), sorted by their relative path string, which is also their
identity. Excluded: any folder named `test`, `tests` or `idle_test`, `site-packages` and
`dist-packages`, `__pycache__`, and the build-specific `config-*` folder and
`_sysconfigdata_*.py`. Its content changes with the Python version (3.11.7: 729 files,
12,079,736 bytes).
"""

from __future__ import annotations

import glob
import hashlib
import os
import struct
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from data_stage.config import CorpusConfig
from data_stage.errors import CorpusError
from data_stage.readers import CorpusStats, Document, read_jsonl, read_parquet, read_text

_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter (the venv's base, not the venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_dir_excluded(name: str) -> bool:
    return name in _EXCLUDED_DIRS or name.startswith("config-")


def stdlib_files() -> list[tuple[str, Path]]:
    """(identity, path) of the embedded corpus, sorted by identity; empty files left out."""
    root = stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _stdlib_dir_excluded(d)]
        for name in files:
            path = Path(folder) / name
            if (
                name.endswith(".py")
                and not name.startswith("_sysconfigdata_")
                and path.stat().st_size > 0
            ):
                found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise CorpusError(f"{root}: no standard library .py files found; pass --corpus explicitly")
    return sorted(found)


def _static_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that contain no glob magic."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _walk(folder: Path) -> list[Path]:
    """Regular files under `folder`, sorted, skipping hidden files and folders."""
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(path)
    return sorted(files)


def resolve_paths(patterns: list[str]) -> list[tuple[str, Path]]:
    """(identity, path) for every file the patterns name, in pattern order, each file once.

    A folder means every non-hidden file below it. The identity is the path relative to the
    pattern's non-glob leading folders (a folder argument: relative to the folder; a file
    argument: its name), so moving the corpus elsewhere keeps the split.
    """
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            base = _static_base(pattern)
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            if not matches:
                raise CorpusError(f"corpus pattern {pattern!r} matched no files")
        else:
            path = Path(pattern)
            if not path.exists():
                raise CorpusError(f"corpus path {pattern!r} does not exist")
            base = path if path.is_dir() else path.parent
            matches = [path]
        files = [f for m in matches for f in (_walk(m) if m.is_dir() else [m])]
        if not files:
            raise CorpusError(f"corpus pattern {pattern!r} contains no files")
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                out.append((file.relative_to(base).as_posix(), file))
    return out


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    return "text"


class Corpus:
    """Iterable of `Document`s; files are resolved at construction so bad paths fail early.

    Each iteration re-reads the files in the same order and refreshes `stats` (complete, with
    `sha256`, once the iteration is exhausted).
    """

    def __init__(self, cfg: CorpusConfig) -> None:
        self.cfg = cfg
        if cfg.paths:
            self.files = resolve_paths(cfg.paths)
        else:
            self.files = stdlib_files()
        self.stats = CorpusStats()

    def _file_documents(self, identity: str, path: Path, stats: CorpusStats) -> Iterator[Document]:
        fmt = "text" if not self.cfg.paths else _format_of(path, self.cfg.format)
        if fmt == "jsonl":
            return read_jsonl(path, identity, self.cfg.text_field, stats)
        if fmt == "parquet":
            return read_parquet(path, identity, self.cfg.text_field, stats)
        doc_bytes = None if not self.cfg.paths else self.cfg.doc_bytes
        return read_text(path, identity, doc_bytes, stats)

    def __iter__(self) -> Iterator[Document]:
        stats = self.stats = CorpusStats()
        digest = hashlib.sha256()
        cap = self.cfg.max_bytes
        for identity, path in self.files:
            for doc in self._file_documents(identity, path, stats):
                ident, text = doc.identity.encode("utf-8"), doc.text.encode("utf-8")
                if cap is not None and stats.bytes + len(text) > cap:
                    self._finish(stats, digest.hexdigest())
                    return
                stats.documents += 1
                stats.bytes += len(text)
                digest.update(struct.pack("<QQ", len(ident), len(text)) + ident + text)
                yield doc
        self._finish(stats, digest.hexdigest())

    def _finish(self, stats: CorpusStats, sha256: str) -> None:
        if stats.documents == 0:
            raise CorpusError(
                f"corpus is empty: max_bytes={self.cfg.max_bytes} is smaller than its first document"
            )
        stats.sha256 = sha256
