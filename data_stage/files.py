"""Small file helpers: atomic writes and sha256 of a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HASH_CHUNK = 4 << 20


def temp_path(path: Path) -> Path:
    """The hidden temp name `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp")


def fsync_and_replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and rename it over `path` (atomic on POSIX)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
