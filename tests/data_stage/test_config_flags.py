"""`tokenizer` and `shards` take every config field as a flag, over an optional `--config` file;
a bad value is one line naming the field, exit 2, nothing written. In-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_stage import ShardConfig, TokenizerConfig, command, parse_command
from data_stage.cli import build_parser, main
from stage_common.config_cli import subcommand_flags
from tests.cli_contract import assert_every_field_is_a_flag, assert_help_describes_every_field

CONFIGS = {"tokenizer": TokenizerConfig, "shards": ShardConfig}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_field_is_a_flag_described_in_help(name: str) -> None:
    flags = subcommand_flags(build_parser(), name)
    assert flags.cls is CONFIGS[name]
    assert_every_field_is_a_flag(flags)
    assert_help_describes_every_field(flags.parser, flags.cls)


def _write(path: Path, cfg: TokenizerConfig | ShardConfig) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_config_file_then_flags_over_it(tmp_path: Path) -> None:
    cfg = TokenizerConfig(
        corpus={"paths": ["a/*.txt"], "format": "text"}, out=tmp_path / "t", vocab_size=300
    )
    file = _write(tmp_path / "tok.yaml", cfg)
    given = ["tokenizer", "--config", str(file), "--vocab-size", "500", "--corpus.doc_bytes", "9"]
    expected = cfg.model_copy(update={"vocab_size": 500, "corpus": cfg.corpus.model_copy(
        update={"doc_bytes": 9})})  # fmt: skip
    assert parse_command(given).config == expected
    # the flags the hand-written CLI had keep working
    old = ["tokenizer", "--config", str(file), "--corpus", "b", "c", "--no-byte-fallback"]
    rebuilt = parse_command(old).config
    assert rebuilt.corpus.paths == ["b", "c"] and rebuilt.byte_fallback is False


def test_a_config_renders_as_the_command_that_rebuilds_it(tmp_path: Path) -> None:
    cfg = ShardConfig(
        corpus={"paths": ["x.jsonl"], "format": "jsonl", "text_field": "body", "max_bytes": 10},
        tokenizer=tmp_path / "tok",
        seq_len=16,
        out=tmp_path / "out dir",
        workers=1,
        batch_bytes=4096,
    )
    argv = command(cfg)
    assert argv[:4] == ["python", "-m", "data_stage", "shards"]
    assert parse_command(argv).config == cfg


@pytest.mark.parametrize(
    ("flags", "field"),
    [(["--seed", "-1"], "seed"), (["--corpus.max-bytes", "0"], "corpus.max_bytes")],
)
def test_a_bad_value_is_one_line_naming_the_field_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    file = _write(tmp_path / "tok.yaml", TokenizerConfig(out=tmp_path / "t", vocab_size=300))
    assert main(["tokenizer", "--config", str(file), *flags]) == 2
    err = capsys.readouterr().err
    assert f"invalid config: {field}:" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(("text", "message"), [(None, "cannot read"), ("[1, 2]", "a mapping")])
def test_an_unusable_config_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    file = tmp_path / "c.yaml"
    if text is not None:
        file.write_text(text)
    assert main(["shards", "--config", str(file)]) == 2
    err = capsys.readouterr().err
    assert f"--config {file}: " in err and message in err and len(err.splitlines()) == 1, err
