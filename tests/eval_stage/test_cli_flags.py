"""Every eval takes each field of its config as a flag, over an optional `--config` file; a bad
value is one line naming the field, exit 2, nothing written. In-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval_stage import BenchConfig, NiahConfig, command, parse_command
from eval_stage.cli import SUBCOMMANDS, build_parser
from tests.cli_contract import assert_every_field_is_a_flag, assert_help_describes_every_field

from .helpers import run_cli

WITHOUT_MODEL = ("latency", "bench-dual-primal")  # --model is optional or absent there


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS.values()))
def test_every_config_field_is_a_flag_described_in_help(name: str) -> None:
    parser = build_parser().subcommands[name]
    flags = parser.get_default("config_flags")
    assert SUBCOMMANDS[flags.cls] == name
    assert_every_field_is_a_flag(flags, [] if name in WITHOUT_MODEL else ["--model", "m"])
    assert_help_describes_every_field(parser, flags.cls)


def test_config_file_then_flags_over_it(tmp_path: Path) -> None:
    cfg = NiahConfig(data=tmp_path / "shards", contexts=[96, 128], trials=2)
    file = tmp_path / "niah.yaml"
    file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    parsed = parse_command(
        ["niah", "--model", "m", "--config", str(file), "--depths", "0", "1", "--no-verify-data"]
    )
    assert parsed.config == cfg.model_copy(update={"depths": [0.0, 1.0], "verify_data": False})
    assert parsed.args.model == Path("m")


def test_a_config_renders_as_the_command_that_rebuilds_it(tmp_path: Path) -> None:
    cfg = BenchConfig(backends=["fused", "autograd"], compare_fla=True, batch=1, assert_speedup=2)
    argv = command(cfg, out=tmp_path)
    parsed = parse_command(argv)
    assert parsed.name == "bench-dual-primal" and parsed.config == cfg
    assert parsed.args.out == tmp_path
    # the flag the hand-written CLI had keeps working
    assert parse_command(["bench-dual-primal", "--backend", "fused"]).config.backends == ["fused"]


@pytest.mark.parametrize(
    ("flags", "field"), [(["--trials", "0"], "trials"), (["--depths", "0", "2"], "depths.1")]
)
def test_a_bad_value_is_one_line_naming_the_field_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    file = tmp_path / "niah.yaml"
    file.write_text(yaml.safe_dump({"data": str(tmp_path)}))
    out = tmp_path / "out"
    argv = ["niah", "--model", str(tmp_path / "nope"), "--config", str(file), "--out", str(out)]
    assert run_cli([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert f"invalid config: {field}" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
