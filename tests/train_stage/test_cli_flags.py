"""`python -m train_stage` takes every TrainConfig field as a flag (the model's dotted), over
`--preset` or a `--config` file; a bad value is one line naming the field, exit 2, nothing
written. In-process: refusals happen before any process group or model exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_contract import assert_every_field_is_a_flag, assert_help_describes_every_field
from train_stage import command, parse_command
from train_stage.cli import main, train_parser
from train_stage.config import TrainConfig


def test_every_config_field_is_a_flag_described_in_help() -> None:
    parser = train_parser()
    flags = parser.get_default("config_flags")
    assert flags.cls is TrainConfig
    assert_every_field_is_a_flag(flags, ["--preset", "debug_tiny"])
    assert_help_describes_every_field(parser, TrainConfig)


def test_config_file_then_flags_over_it(tmp_path: Path) -> None:
    cfg = TrainConfig.from_preset("debug_tiny", data="shards", run_dir="run", steps=7)
    file = tmp_path / "train.yaml"
    file.write_text(cfg.to_yaml())
    given = ["--config", str(file), "--min-lr-ratio", "0.5", "--betas", "0.8", "0.99",
             "--model.chunk_size", "4", "--mixer", "attention", "--no-mlflow"]  # fmt: skip
    expected = cfg.model_copy(
        update={
            "min_lr_ratio": 0.5,
            "betas": (0.8, 0.99),
            "model": cfg.model.model_copy(update={"chunk_size": 4, "mixer": "attention"}),
            "mlflow": cfg.mlflow.model_copy(update={"enabled": False}),
        }
    )
    assert parse_command(given).config == expected
    # the hand-run command the flow records reads the same file
    assert parse_command(command(file, nproc=2)).config.mlflow.enabled is False


def test_a_preset_with_a_curriculum_flag_takes_its_length_from_the_curriculum() -> None:
    given = ["--preset", "debug_tiny", "--data", "d", "--run-dir", "r", "--curriculum", "16:2,32:3"]
    cfg = parse_command(given).config
    assert cfg.steps == 5 and [s.seq_len for s in cfg.curriculum] == [16, 32]


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--model.chunk-size", "0"], "model.chunk_size"),
        (["--min-lr-ratio", "2"], "min_lr_ratio"),
        (["--betas", "0.9"], "betas.1"),
        (["--mlflow.flush-every", "0"], "mlflow.flush_every"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    run_dir = tmp_path / "run"
    argv = ["--preset", "debug_tiny", "--data", str(tmp_path), "--run-dir", str(run_dir), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"invalid config: {field}:" in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()


def test_a_value_that_does_not_parse_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--preset", "debug_tiny", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--betas", "[0.1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "betas" in err and len(err.strip().splitlines()) == 1, err
