"""TTTLM.save_pretrained / from_pretrained and the integrity helpers under them (ttt_core.files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttt_core import TTTLM, ModelConfig, generate, is_pretrained
from ttt_core.files import (
    CHECKSUMS_FILE,
    IntegrityError,
    atomic_directory,
    atomic_write_text,
    recover_directory,
    sha256_file,
    verify_checksums,
    write_checksums,
)

IDS = torch.randint(0, 96, (2, 21), generator=torch.Generator().manual_seed(3))


def tiny(seed: int = 0, **overrides) -> TTTLM:
    torch.manual_seed(seed)
    return TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=96, **overrides)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[TTTLM, Path]:
    model = tiny()
    return model, model.save_pretrained(tmp_path_factory.mktemp("pretrained") / "m")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "overrides", [{}, {"tie_embeddings": True}, {"mixer": "attention"}], ids=str
)
def test_round_trip_gives_identical_logits(tmp_path, overrides):
    model = tiny(**overrides)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        CHECKSUMS_FILE,
        "config.json",
        "model.safetensors",
    ]
    loaded = TTTLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed.weight
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())


def test_dtype_casts_every_weight(saved):
    model, path = saved
    loaded = TTTLM.from_pretrained(path, dtype=torch.float64)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert torch.equal(loaded.embed.weight, model.embed.weight.double())


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(saved, tmp_path):
    _, path = saved
    copy = tmp_path / "m"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    flip_byte(copy / "model.safetensors", (copy / "model.safetensors").stat().st_size - 5)
    with pytest.raises(IntegrityError, match=r"m/model\.safetensors: sha256 \w+ does not match"):
        TTTLM.from_pretrained(copy)


@pytest.mark.parametrize("name", ["model.safetensors", CHECKSUMS_FILE, "config.json"])
def test_a_missing_file_is_refused_naming_it(saved, tmp_path, name):
    _, path = saved
    copy = tmp_path / "m"
    copy.mkdir()
    for f in path.iterdir():
        if f.name != name:
            (copy / f.name).write_bytes(f.read_bytes())
    assert not is_pretrained(copy)
    with pytest.raises(IntegrityError, match=rf"m/{name.replace('.', '[.]')}: .*missing"):
        TTTLM.from_pretrained(copy)


def test_an_old_export_is_refused_with_how_to_reexport(tmp_path):
    (tmp_path / "model_config.json").write_text(tiny().config.model_dump_json())
    with pytest.raises(IntegrityError, match=r"old format .* `python -m train_stage export"):
        TTTLM.from_pretrained(tmp_path)


def test_another_format_version_is_refused(saved, tmp_path):
    _, path = saved
    copy = tmp_path / "m"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(IntegrityError, match=r"config\.json: sha256"):
        TTTLM.from_pretrained(copy)
    write_checksums(copy)  # consistent, but written by a future version
    with pytest.raises(IntegrityError, match="format_version 99"):
        TTTLM.from_pretrained(copy)


def test_saving_over_a_directory_needs_overwrite_and_replaces_it_whole(tmp_path):
    out = tiny(seed=0).save_pretrained(tmp_path / "m")
    (out / "stray.txt").write_text("from the old directory")
    before = sha256_file(out / "model.safetensors")
    with pytest.raises(FileExistsError, match="already exists"):
        tiny(seed=1).save_pretrained(out)
    assert sha256_file(out / "model.safetensors") == before
    tiny(seed=1).save_pretrained(out, overwrite=True)
    assert not (out / "stray.txt").exists()
    assert sha256_file(out / "model.safetensors") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old copy left
    verify_checksums(out)


def test_a_failed_commit_leaves_the_target_and_no_temp(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target, replace=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_checksums_cover_subdirectories_and_ignore_files_added_later(tmp_path):
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"abc")
    sums = verify_checksums(tmp_path / "d")
    assert sums == {"sub/x.bin": sha256_file(tmp_path / "d" / "sub" / "x.bin")}
    (tmp_path / "d" / "eval.json").write_text("{}")  # results written beside later
    verify_checksums(tmp_path / "d")
    flip_byte(tmp_path / "d" / "sub" / "x.bin", 0)
    with pytest.raises(IntegrityError, match=r"d/sub/x\.bin: sha256"):
        verify_checksums(tmp_path / "d")


def test_recovery_after_a_kill_keeps_the_old_or_the_new_directory(tmp_path):
    target, building, old = tmp_path / "d", tmp_path / ".d.tmp", tmp_path / ".d.old"
    # Killed between setting the old one aside and renaming the new one in: the old comes back.
    old.mkdir()
    (old / "a.txt").write_text("old")
    building.mkdir()
    recover_directory(target)
    assert (target / "a.txt").read_text() == "old" and not building.exists()
    # Killed after the new one moved in, before the old one was deleted: the new one stays.
    old.mkdir()
    recover_directory(target)
    assert (target / "a.txt").read_text() == "old" and not old.exists()


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_the_integrity_module_imports_without_torch_and_generate_is_the_function():
    code = "import sys, ttt_core.files; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert callable(generate) and generate.__module__ == "ttt_core.generate"
