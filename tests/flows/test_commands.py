"""`bringup.json`'s per-stage commands parse back, through the stages' own CLIs, to exactly the
configs the flow ran."""

import shlex

import pytest

from data_stage import CorpusConfig, ShardConfig, TokenizerConfig
from data_stage.__main__ import _corpus
from data_stage.__main__ import _parser as data_parser
from eval_stage import BenchConfig
from eval_stage.cli import _config
from eval_stage.cli import _parser as eval_parser
from flows.commands import stage_commands
from flows.config import PIPELINE_PRESETS
from flows.request import BringupRequest, resolve


def parsed(command: str, parser):
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"]
    return parser.parse_args(argv[3:])


@pytest.mark.parametrize("preset", sorted(PIPELINE_PRESETS))
def test_each_command_rebuilds_the_stage_config(preset, tmp_path):
    request = BringupRequest(preset=preset, overrides={"baseline": "base", "niah.seed": 7})
    cfg = resolve(request, tmp_path)
    commands = stage_commands(cfg)

    for stage, kind in (("tokenizer", TokenizerConfig), ("shards", ShardConfig)):
        args = parsed(commands[stage], data_parser())
        fields = {
            f: getattr(args, f) for f in kind.model_fields if getattr(args, f, None) is not None
        }
        rebuilt = kind(**{**fields, "corpus": _corpus(args)})
        assert rebuilt == getattr(cfg, f"{'shard' if stage == 'shards' else stage}_config")()
        assert isinstance(rebuilt.corpus, CorpusConfig)

    args = parsed(commands["bench"], eval_parser())
    assert _config(args, BenchConfig) == cfg.bench and args.out == cfg.stage_dir("bench")
    for name in cfg.evals:
        args = parsed(commands[f"eval.{name}"], eval_parser())
        assert _config(args, type(cfg.eval_config(name))) == cfg.eval_config(name)
        assert args.model == cfg.stage_dir("export")
        assert args.baseline == cfg.run_root / "base" / "export"

    train = shlex.split(commands["train"])
    assert train[train.index("--config") + 1] == str(cfg.stage_dir("train") / "train_config.yaml")
    assert f"--nproc_per_node={cfg.nproc}" in train


def test_attention_bring_ups_have_no_bench_command(tmp_path):
    cfg = resolve(BringupRequest(preset="debug_tiny", mixer="attention"), tmp_path)
    assert "bench" not in stage_commands(cfg)
