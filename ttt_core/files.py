"""File integrity, one rule for the whole project: atomic writes, atomic directories, sha256.

Durability rule (every write goes through it): write a temp beside the target, fsync the file,
rename it over the target, fsync the directory. Readers see the old content or the new, never
half, and the rename survives a power cut.

A directory is committed the same way: built under a hidden temp name beside the target, given a
`checksums.json` (relative path -> sha256 of every file in it), then renamed into place. Replacing
an existing directory keeps the old one until the new one is complete. Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHECKSUMS_FILE = "checksums.json"
_HASH_CHUNK = 4 << 20


class IntegrityError(ValueError):
    """A file is missing, or its bytes are not those its checksum manifest recorded."""


def temp_path(path: Path) -> Path:
    """The hidden temp name (unique to this process) `path` is written under before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_and_replace(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk, rename it over `path` (atomic on POSIX), flush the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data` (the same digest `sha256_file` gives for a file of these bytes)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(directory: Path) -> list[str]:
    """Every regular file below `directory` (checksums.json excluded), as sorted POSIX paths."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory).as_posix() != CHECKSUMS_FILE
    )


def write_checksums(directory: Path) -> dict[str, str]:
    """Write `<directory>/checksums.json` listing the sha256 of every file under it (fsynced);
    return that mapping."""
    directory = Path(directory)
    sums = {name: sha256_file(directory / name) for name in _files_under(directory)}
    atomic_write_text(directory / CHECKSUMS_FILE, json.dumps(sums, indent=2) + "\n")
    return sums


def verify_checksums(directory: Path) -> dict[str, str]:
    """Check every file `<directory>/checksums.json` lists against its sha256 and return the
    mapping. Files it does not list (results written later beside them) are not checked.

    Raises `IntegrityError` naming the manifest when it is missing or unreadable, or the first
    listed file that is missing or whose bytes changed.
    """
    directory = Path(directory)
    manifest = directory / CHECKSUMS_FILE
    try:
        sums = json.loads(manifest.read_text())
    except FileNotFoundError as e:
        raise IntegrityError(f"{manifest}: missing; the directory cannot be verified") from e
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{manifest}: unreadable ({e})") from e
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise IntegrityError(f"{manifest}: not a mapping of relative path to sha256")
    for name, expected in sorted(sums.items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path}: sha256 {actual[:12]} does not match {CHECKSUMS_FILE} "
                f"({expected[:12]}); the file is damaged or was changed after it was written"
            )
    return sums


def directory_digest(directory: Path) -> str:
    """sha256 of a committed directory's `checksums.json`: changes when any file in it does."""
    return sha256_file(Path(directory) / CHECKSUMS_FILE)


def _staging_names(target: Path) -> tuple[Path, Path]:
    """(where a new `target` is built, where the old one waits while the new one moves in)."""
    return target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def recover_directory(target: Path) -> None:
    """Undo what a process killed while committing `target` left behind: a half-built temp is
    removed; an old copy set aside is put back if the new one never arrived, else removed."""
    target = Path(target)
    building, old = _staging_names(target)
    if old.exists():
        if target.exists():
            _rmtree(old)
        else:
            os.replace(old, target)
    if building.exists():
        shutil.rmtree(building)


@contextmanager
def atomic_directory(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp directory beside `target`; on a clean exit write its checksums.json
    and rename it to `target`. On an exception the temp is removed and `target` is untouched.

    An existing `target` is refused (FileExistsError) unless `replace`: then it is set aside,
    the new one renamed in, and only then the old one deleted, so a kill at any moment leaves
    the old or the new directory whole (`recover_directory` tidies up on the next call).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target}: already exists and replacing it was not asked for")
    building, old = _staging_names(target)
    building.mkdir()
    try:
        yield building
        write_checksums(building)
        for path in [*building.rglob("*"), building]:  # publish no unflushed data or entry
            if path.is_dir():
                fsync_dir(path)
            else:
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(building, target)
    fsync_dir(target.parent)
    if old.exists():
        _rmtree(old)
