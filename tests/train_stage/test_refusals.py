"""Every refusal: one clear line, exit code 2, nothing written.

Refusals happen before any process group or model exists, so most cases call the CLI's `main`
in this process; one case runs the real command to pin the exit code end to end.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from train_stage import TrainConfig

from .conftest import run_in_process, run_train

TINY = ("--preset", "debug_tiny", "--no-mlflow", "--seq-len", "32", "--steps", "2")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--strategy", "fsdp2"), "strategy 'fsdp2' is not supported; supported: 'none'"),
        (("--strategy", "deepspeed"), "fsdp2 and deepspeed are not implemented"),
        (("--precision", "bf16"), "--precision bf16 needs CUDA"),
        (("--lr", "-1"), "invalid config: lr: Input should be greater than 0"),
        (("--lr", "inf"), "invalid config: lr: Input should be a finite number"),
        (("--model.eta-base", "nan"), "invalid config: model.eta_base: Input should be a finite"),
        (("--seq-len", "65"), "seq_len 65 is longer than the shards' 64"),
        (("--vocab-size", "1000"), "model vocab_size 1000 does not match the shards' tokenizer"),
        (("--resume", "/nonexistent/step_1"), "/nonexistent/step_1: no such checkpoint directory"),
        (("--batch-size", "100000"), "one step needs 100000"),
        (("--curriculum", "16:2,bad"), "is not SEQ:STEPS"),
        (("--ops-backend", "triton"), "model.ops_backend: ops backend 'triton' cannot run here: "),
        (("--e2e-inner-lr-warmup", "0.5"), "e2e_inner_lr_warmup: TTT-E2E settings, but the model"),
        (
            ("--mixer", "swa", "--model.e2e-suffix-layers", "1", "--documents", "isolated"),
            "documents='isolated' is not implemented for TTT-E2E",
        ),
    ],
)
def test_refusals_exit_2_with_a_clear_message_and_write_nothing(
    tiny_shards, tmp_path, capsys, extra, message
):
    run_dir = tmp_path / "run"
    result = run_in_process(
        capsys, *TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), *extra, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not run_dir.exists()


def test_a_non_finite_float_in_the_config_file_is_refused(tiny_shards, tmp_path, capsys):
    """YAML's `.inf` is a float like any other: the same refusal as the flag, nothing written."""
    recipe = TrainConfig.preset_dict("debug_tiny")
    text = yaml.safe_dump({**recipe, "lr": float("inf")})
    assert "lr: .inf" in text.splitlines()
    config = tmp_path / "run.yaml"
    config.write_text(text)
    run_dir = tmp_path / "run"
    argv = (*TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir), "--config", str(config))
    result = run_in_process(capsys, *argv[2:], check=False)  # --config instead of --preset
    assert result.returncode == 2, result.stderr
    assert "invalid config: lr: Input should be a finite number" in result.stderr
    assert not run_dir.exists()


def test_corrupt_shard_is_refused_naming_it(tiny_shards, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_shards, data)
    shard = next(data.glob("train-*.arrow"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    argv = (*TINY, "--data", str(data), "--run-dir", str(tmp_path / "run"))
    result = run_in_process(capsys, *argv, check=False)
    assert result.returncode == 2
    assert "fails verification" in result.stderr and shard.name in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_is_refused(tmp_path):
    """The real command, end to end (its exit code as a process)."""
    result = run_train(
        *TINY, "--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "run"), check=False
    )
    assert result.returncode == 2 and "is unusable" in result.stderr


def test_resume_never_refuses_to_overwrite_checkpoints(tiny_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_in_process(capsys, *TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    result = run_in_process(
        capsys,
        *TINY,
        "--data",
        str(tiny_shards),
        "--run-dir",
        str(run_dir),
        "--resume",
        "never",
        check=False,
    )
    assert result.returncode == 2 and "already has checkpoints" in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_resume_with_another_model_is_refused(tiny_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_in_process(capsys, *TINY, "--data", str(tiny_shards), "--run-dir", str(run_dir))
    result = run_in_process(
        capsys,
        *TINY,
        "--data",
        str(tiny_shards),
        "--run-dir",
        str(run_dir),
        "--mixer",
        "attention",
        check=False,
    )
    assert result.returncode == 2 and "different model config (differs in mixer)" in result.stderr
