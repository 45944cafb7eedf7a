"""`python -m train_stage export`: the model format, checksums, and every way it refuses to lose
data (out overlapping an input, an existing export, a kill mid-export, a missing tokenizer)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_stage import load_tokenizer, read_manifest
from data_stage.__main__ import main as data_stage_main
from eval_stage import open_model
from tests.helpers import HANG_GUARD_S
from train_stage import load_run_model
from train_stage.cli import main as train_main
from train_stage.config import TrainConfig
from train_stage.run import run_training
from ttt_core import TTTLM
from ttt_core.files import sha256_file, verify_checksums

from .conftest import train_env

# The export is paused here (after the temp dir is filled, before the commit) until it is killed.
STALL_MARKER = "STALLED"
STALLED_EXPORT = f"""
import sys, time
import train_stage.export as export
real = export.copy_tokenizer
def stalled(source, out):
    real(source, out)
    (out.parent / "{STALL_MARKER}").touch()
    time.sleep(3600)  # killed by the test long before
export.copy_tokenizer = stalled
from train_stage.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def run_dir(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step debug_tiny run (checkpoints at steps 1 and 2) on a private copy of the shards."""
    root = tmp_path_factory.mktemp("export_run")
    shards = shutil.copytree(tiny_shards, root / "shards")
    cfg = TrainConfig.from_preset("debug_tiny", data=shards, run_dir=root / "run", steps=2,
                                  save_every=1, keep_last=2, seq_len=32, mlflow={"enabled": False})  # fmt: skip
    assert run_training(cfg) == 0
    return cfg.run_dir


def export(run_dir: Path, out: Path, *extra: str) -> int:
    return train_main(["export", "--run-dir", str(run_dir), "--out", str(out), *extra])


def step_of(export_dir: Path) -> int:
    return json.loads((export_dir / "export.json").read_text())["step"]


def test_export_is_a_pretrained_dir_with_tokenizer_and_matches_the_run(run_dir, tmp_path):
    out = tmp_path / "export"
    assert export(run_dir, out) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer",
        "export.json",
        "checksums.json",
    }
    assert {"tokenizer/tokenizer.model", "tokenizer/tokenizer.json"} <= set(verify_checksums(out))
    shards = run_dir.parent / "shards"
    assert load_tokenizer(out / "tokenizer").hash == read_manifest(shards).tokenizer.hash
    assert step_of(out) == 2
    model, run = TTTLM.from_pretrained(out), load_run_model(run_dir)
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, run.model(ids).logits)
    loaded = open_model(out)  # eval_stage: export.json provenance and the tokenizer
    assert loaded.info["step"] == 2 and loaded.tokenizer.vocab_size == 512
    # the trainer's throughput (median of its steps after the first) travels with the export
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["tokens_per_s"] > 0
    assert loaded.info["train_tokens_per_s"] == summary["tokens_per_s"]
    from_run = open_model(run_dir)  # a run directory, through train_stage.load_run_model
    assert from_run.info["step"] == 2 and from_run.tokenizer.hash == loaded.tokenizer.hash


@pytest.mark.parametrize("where", ["shard dir", "tokenizer", "inside run", "run parent", "ckpt"])
def test_an_out_overlapping_an_input_is_refused_and_the_input_still_verifies(
    run_dir, where, capsys
):
    shards = run_dir.parent / "shards"
    out = {
        "shard dir": shards,
        "tokenizer": shards / "tokenizer",
        "inside run": run_dir / "export",
        "run parent": run_dir.parent,
        "ckpt": run_dir / "checkpoints" / "step_00000002",
    }[where]
    before = {p: sha256_file(p) for p in run_dir.parent.rglob("*") if p.is_file()}
    assert export(run_dir, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out}: it " in err
    assert {p: sha256_file(p) for p in run_dir.parent.rglob("*") if p.is_file()} == before
    assert data_stage_main(["verify", str(shards)]) == 0


def test_an_existing_export_needs_force_which_replaces_it_whole(run_dir, tmp_path, capsys):
    out = tmp_path / "export"
    first = run_dir / "checkpoints" / "step_00000001"
    assert export(run_dir, out, "--checkpoint", str(first)) == 0
    (out / "tokenizer" / "stray.txt").write_text("only in the old export")
    old = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}
    assert export(run_dir, out) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == old
    assert step_of(out) == 1
    assert export(run_dir, out, "--force") == 0
    assert step_of(out) == 2 and not (out / "tokenizer" / "stray.txt").exists()
    verify_checksums(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_force_never_replaces_a_directory_that_is_not_an_export(run_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export(run_dir, out, "--force") == 2
    assert "is not an export" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_sigkill_mid_export_leaves_the_previous_export_and_the_next_run_cleans_up(
    run_dir, tmp_path
):
    out = tmp_path / "export"
    assert export(run_dir, out, "--checkpoint", str(run_dir / "checkpoints" / "step_00000001")) == 0
    old = verify_checksums(out)
    argv = ["export", "--run-dir", str(run_dir), "--out", str(out), "--force"]
    proc = subprocess.Popen([sys.executable, "-c", STALLED_EXPORT, *argv], env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    marker, deadline = tmp_path / ".export.tmp" / STALL_MARKER, time.monotonic() + HANG_GUARD_S
    try:
        while not marker.exists():  # the observed event: the new export is built, not committed
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the export never reached its commit"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert verify_checksums(out) == old and step_of(out) == 1
    assert open_model(out).info["step"] == 1
    assert export(run_dir, out, "--force") == 0
    assert step_of(out) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the temp dir is gone


def test_a_missing_tokenizer_is_an_error_not_an_export_without_one(run_dir, tmp_path, capsys):
    shards = shutil.copytree(run_dir.parent / "shards", tmp_path / "shards")
    shutil.rmtree(shards / "tokenizer")
    moved = shutil.copytree(run_dir, tmp_path / "run")
    cfg = TrainConfig.from_yaml(moved / "config.yaml").model_copy(update={"data": shards})
    (moved / "config.yaml").write_text(cfg.to_yaml())
    assert export(moved, tmp_path / "export") == 2
    assert f"{shards / 'tokenizer'}: no such tokenizer directory" in capsys.readouterr().err
    assert not (tmp_path / "export").exists() and not (tmp_path / ".export.tmp").exists()


def test_a_full_disk_mid_export_is_exit_4_and_the_previous_export_survives(
    run_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    assert export(run_dir, out, "--checkpoint", str(run_dir / "checkpoints" / "step_00000001")) == 0
    old = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}

    def no_space(model, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "model.safetensors"))

    monkeypatch.setattr("train_stage.export.write_pretrained", no_space)
    assert export(run_dir, out, "--force") == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left" in err and "Traceback" not in err
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
