"""A full disk (ENOSPC) while building shards, saving a checkpoint or appending metrics: exit 4,
one line "no space left on <fs> ...: needs ~N MB", temps removed, the earlier good output intact,
and the command succeeds once space is freed.

Two ways to fill the disk: a real, small tmpfs (when running as root where `mount` works) and
an `OSError(ENOSPC)` injected at the write in this process (always).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import train_stage.checkpoint
import train_stage.tracking
from data_stage.__main__ import main as data_main
from data_stage.shard_writer import SplitWriter
from data_stage.tokenizer import load_tokenizer
from train_stage.cli import main as train_main
from train_stage.distributed import torchrun_command

from .helpers import (
    TRAIN,
    assert_run_intact,
    assert_shards_intact,
    failure_line,
    latest_name,
    leaked_temps,
    losses,
    run_main,
    tree_bytes,
)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class SmallDisk:
    """A tmpfs of a chosen size mounted at `path`; `grow` frees space (remount, bigger)."""

    def __init__(self, path: Path):
        self.path = path

    def mount(self, size: int) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )
        return self

    def grow(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )

    def unmount(self) -> None:
        # lazy: a mount still busy (a killed writer's open file) is detached all the same
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def _tmpfs_works(probe: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    try:
        SmallDisk(probe).mount(1 << 20).unmount()
    except (subprocess.CalledProcessError, OSError):
        return False
    return True


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if not _tmpfs_works(tmp_path / "probe"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount); the injected cases run")
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.unmount()


def _no_space(path: str = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


# ------------------------------------------------------------------ shards


def _build(out: Path, tokenizer: Path, capsys, seq_len: int = 16) -> tuple[int, str, str]:
    argv = ["shards", "--corpus-format", "stdlib", "--max-bytes", "300000", "--workers", "1",
            "--tokenizer", str(tokenizer), "--seq-len", str(seq_len), "--out", str(out)]  # fmt: skip
    return run_main(data_main, argv, capsys)


def _assert_shards_refused_for_space(code: int, err: str, out: Path) -> None:
    assert code == 4, err
    line = failure_line(err, "data_stage shards: no space left on ")
    assert f"(writing {out})" in line and "needs ~" in line and "MB" in line
    assert_shards_intact(out)  # the previous build, untouched; no temp left


def test_shards_on_a_full_tmpfs(small_disk, shards, tokenizer, capsys):
    out = small_disk.mount(int(_du(shards) * 1.5)).path / "shards"
    shutil.copytree(shards, out)  # the earlier good build
    code, _, err = _build(out, tokenizer, capsys)
    _assert_shards_refused_for_space(code, err, out)
    small_disk.grow(8 << 20)
    code, _, err = _build(out, tokenizer, capsys)
    assert code == 0, err
    assert_shards_intact(out)


def test_shards_with_enospc_injected_at_the_write(shards, tokenizer, tmp_path, capsys, monkeypatch):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    real_write = SplitWriter.write
    calls = []

    def write_then_fill(self: SplitWriter, rows) -> None:
        calls.append(1)
        if len(calls) > 1:  # temps exist by now, as on a disk that fills mid-build
            raise _no_space(str(self._temps[-1]) if self._temps else "")
        real_write(self, rows)

    monkeypatch.setattr(SplitWriter, "write", write_then_fill)
    code, _, err = _build(out, tokenizer, capsys)
    _assert_shards_refused_for_space(code, err, out)
    monkeypatch.setattr(SplitWriter, "write", real_write)
    assert _build(out, tokenizer, capsys)[0] == 0
    assert_shards_intact(out)


def test_discard_removes_temps_even_when_closing_the_shard_fails(tmp_path):
    writer = SplitWriter(tmp_path, "train", row_len=4, shard_rows=8)
    writer.write(np.zeros((3, 4), dtype=np.int32))
    assert leaked_temps(tmp_path)

    class FullSink:
        def close(self) -> None:
            raise _no_space("sink")

    writer._writer = FullSink()  # closing writes the file footer: on a full disk it raises
    writer.discard()
    assert not leaked_temps(tmp_path) and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ tokenizer


def _tokenizer(out: Path, capsys, vocab_size: int) -> tuple[int, str, str]:
    argv = ["tokenizer", "--corpus-format", "stdlib", "--max-bytes", "100000",
            "--vocab-size", str(vocab_size), "--out", str(out)]  # fmt: skip
    return run_main(data_main, argv, capsys)


def _assert_tokenizer_kept(code: int, err: str, out: Path, before: dict[str, bytes]) -> None:
    assert code == 4, err
    line = failure_line(err, "data_stage tokenizer: no space left on ")
    assert f"(writing {out})" in line and "needs ~" in line
    assert tree_bytes(out) == before  # the previous tokenizer, whole
    assert load_tokenizer(out).vocab_size == 512


def test_tokenizer_on_a_full_tmpfs(small_disk, tokenizer, capsys):
    out = small_disk.mount(_du(tokenizer) + 4096).path / "tokenizer"
    shutil.copytree(tokenizer, out)
    before = tree_bytes(out)
    code, _, err = _tokenizer(out, capsys, vocab_size=600)
    _assert_tokenizer_kept(code, err, out, before)


def test_tokenizer_with_enospc_injected(tokenizer, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tokenizer"
    shutil.copytree(tokenizer, out)
    before = tree_bytes(out)
    real = Path.write_bytes

    def fill_at_the_second_file(self: Path, data: bytes) -> int:
        if self.parent == out and ".json." in self.name and self.name.endswith(".tmp"):
            raise _no_space(str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_at_the_second_file)
    code, _, err = _tokenizer(out, capsys, vocab_size=600)
    _assert_tokenizer_kept(code, err, out, before)


# ------------------------------------------------------------------ checkpoints and metrics


def _train(run_dir: Path, shards: Path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), *extra]
    return run_main(train_main, argv, capsys)


def _assert_train_refused_for_space(code: int, err: str, run_dir: Path, writing: str) -> str:
    assert code == 4, err
    line = failure_line(err, "train_stage: no space left on ")
    assert writing in line and "needs ~" in line and "--resume auto" in line
    assert latest_name(run_dir) == "step_00000002"  # the previous checkpoint survives
    assert_run_intact(run_dir)
    return line


def test_checkpoint_save_on_a_full_tmpfs(small_disk, shards, trained_run, capsys):
    checkpoint = _du(trained_run / "checkpoints" / "step_00000002")
    run_dir = small_disk.mount(int(checkpoint * 1.5)).path / "run"
    code, _, err = _train(run_dir, shards, capsys)
    line = _assert_train_refused_for_space(code, err, run_dir, ".tmp-step_00000004")
    assert f"on {small_disk.path} " in line
    small_disk.grow(64 << 20)
    code, _, err = _train(run_dir, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert losses(run_dir) == losses(trained_run)
    assert_run_intact(run_dir)


def test_checkpoint_save_with_enospc_injected(shards, trained_run, tmp_path, capsys, monkeypatch):
    real = train_stage.checkpoint.write_checksums
    calls = []

    def checksums_then_fill(directory: Path) -> None:
        calls.append(directory)
        if len(calls) > 1:  # the second save: its DCP files are written, then the disk is full
            raise _no_space(str(directory / "checksums.json"))
        real(directory)

    monkeypatch.setattr(train_stage.checkpoint, "write_checksums", checksums_then_fill)
    run_dir = tmp_path / "run"
    code, _, err = _train(run_dir, shards, capsys)
    _assert_train_refused_for_space(code, err, run_dir, ".tmp-step_00000004")
    monkeypatch.setattr(train_stage.checkpoint, "write_checksums", real)
    code, _, err = _train(run_dir, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert losses(run_dir) == losses(trained_run)


def test_metrics_append_with_enospc_injected(shards, trained_run, tmp_path, capsys, monkeypatch):
    """The disk fills in the middle of a metrics line: exit 4; the resume drops the partial line
    and the history comes out whole."""
    lines = []

    def open_partially(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
        if "a" not in mode:
            return handle
        lines.append(path)
        if len(lines) < 3:
            return handle

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, text: str) -> int:
                handle.write(text[: len(text) // 2])
                handle.flush()
                raise _no_space(str(path))

        return Full()

    monkeypatch.setattr(train_stage.tracking, "open", open_partially, raising=False)
    run_dir = tmp_path / "run"
    code, _, err = _train(run_dir, shards, capsys)
    line = _assert_train_refused_for_space_metrics(code, err, run_dir)
    assert "metrics.jsonl" in line
    monkeypatch.delattr(train_stage.tracking, "open")
    code, _, err = _train(run_dir, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert "dropping a partial last line" in err
    assert losses(run_dir) == losses(trained_run)
    assert_run_intact(run_dir)


def _assert_train_refused_for_space_metrics(code: int, err: str, run_dir: Path) -> str:
    assert code == 4, err
    line = failure_line(err, "train_stage: no space left on ")
    assert "needs ~" in line and "--resume auto" in line
    assert latest_name(run_dir) == "step_00000002"
    assert not leaked_temps(run_dir)
    return line


@pytest.mark.slow
def test_checkpoint_save_on_a_full_tmpfs_with_two_fsdp_ranks(
    small_disk, shards, trained_run, capsys
):
    """Both ranks fail the save together (no rank left waiting in a collective); rank 0 says
    so in one line; the 2-rank checkpoint of step 2 resumes in one process once space is freed."""
    checkpoint = _du(trained_run / "checkpoints" / "step_00000002")
    run_dir = small_disk.mount(int(checkpoint * 1.5)).path / "run"
    argv = [*TRAIN, "--data", str(shards), "--run-dir", str(run_dir), "--strategy", "fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = torchrun_command(2, "train_stage", argv)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    assert "exitcode  : 4" in result.stderr, result.stderr[-3000:]
    # torchrun reports a failed worker with its own traceback (ChildFailedError); the workers'
    # output before it must hold none, and exactly one line from rank 0.
    assert result.stderr.count("Traceback") == 1 and "ChildFailedError" in result.stderr
    workers = result.stderr[: result.stderr.index("Traceback")]
    line = failure_line(workers, "train_stage: no space left on ")
    assert ".tmp-step_00000004" in line and "step_00000002 is intact" in line
    assert latest_name(run_dir) == "step_00000002"
    assert_run_intact(run_dir)
    small_disk.grow(64 << 20)
    code, out, err = _train(run_dir, shards, capsys, "--resume", "auto")
    assert code == 0, err
    assert "resumed from" in out and sorted(losses(run_dir)) == [1, 2, 3, 4]
