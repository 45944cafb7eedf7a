"""`bringup.json`'s per-stage commands parse back, through the stages' own public
`parse_command`, to exactly the configs the flow ran."""

import shlex

import pytest

import data_stage
import eval_stage
import train_stage
from flows.commands import stage_commands
from flows.config import PIPELINE_PRESETS
from flows.request import BringupRequest, resolve


@pytest.mark.parametrize("preset", sorted(PIPELINE_PRESETS))
def test_each_command_rebuilds_the_stage_config(preset, tmp_path):
    request = BringupRequest(preset=preset, overrides={"baseline": "base", "niah.seed": 7})
    cfg = resolve(request, tmp_path)
    commands = {stage: shlex.split(line) for stage, line in stage_commands(cfg).items()}

    assert data_stage.parse_command(commands["tokenizer"]).config == cfg.tokenizer_config()
    assert data_stage.parse_command(commands["shards"]).config == cfg.shard_config()

    bench = eval_stage.parse_command(commands["bench"])
    assert bench.config == cfg.bench and bench.args.out == cfg.stage_dir("bench")
    for name in cfg.evals:
        parsed = eval_stage.parse_command(commands[f"eval.{name}"])
        assert parsed.config == cfg.eval_config(name)
        assert parsed.args.model == cfg.stage_dir("export")
        assert parsed.args.baseline == cfg.run_root / "base" / "export"
        assert parsed.args.out == cfg.stage_dir("eval")

    # the train command reads the config file the train task writes
    train = commands["train"]
    config_file = cfg.stage_dir("train") / "train_config.yaml"
    assert train[train.index("--config") + 1] == str(config_file)
    assert f"--nproc_per_node={cfg.nproc}" in train
    config_file.parent.mkdir(parents=True)
    config_file.write_text(cfg.train_config().to_yaml())
    parsed = train_stage.parse_command(train)
    assert parsed.config == cfg.train_config().model_copy(
        update={"mlflow": cfg.train_config().mlflow.model_copy(update={"enabled": False})}
    )


def test_attention_bring_ups_have_no_bench_command(tmp_path):
    cfg = resolve(BringupRequest(preset="debug_tiny", mixer="attention"), tmp_path)
    assert "bench" not in stage_commands(cfg)


def test_controls_have_their_own_train_export_eval_commands_and_a_compare(tmp_path):
    request = BringupRequest(preset="debug_tiny", overrides={"controls": ["none", "attention"]})
    cfg = resolve(request, tmp_path)
    commands = {stage: shlex.split(line) for stage, line in stage_commands(cfg).items()}
    for mixer in ("none", "attention"):
        control = cfg.control_config(mixer)
        assert f"controls.{mixer}.tokenizer" not in commands  # the model's data is reused
        for name in cfg.evals:
            parsed = eval_stage.parse_command(commands[f"controls.{mixer}.eval.{name}"])
            assert parsed.config == control.eval_config(name)
            assert parsed.args.model == control.stage_dir("export")
        train = commands[f"controls.{mixer}.train"]
        assert train[train.index("--config") + 1] == str(
            control.stage_dir("train") / "train_config.yaml"
        )
    assert commands["compare"] == eval_stage.compare_command(
        [cfg.run_dir, cfg.run_dir / "controls" / "none", cfg.run_dir / "controls" / "attention"],
        cfg.stage_dir("compare"),
    )
    assert eval_stage.parse_command(commands["compare"]).args.runs[0] == cfg.run_dir


def test_an_extension_and_the_long_context_eval_have_their_commands(tmp_path):
    sets = {"controls": ["none"], "extend_seq_len": 128, "extend.steps": 3,
            "long_context": {"lengths": [64, 128], "sequences": 2}}  # fmt: skip
    cfg = resolve(BringupRequest(preset="debug_tiny", overrides=sets), tmp_path)
    commands = {stage: shlex.split(line) for stage, line in stage_commands(cfg).items()}
    assert data_stage.parse_command(commands["extend_shards"]).config == cfg.extend_shard_config()
    assert "controls.none.extend_shards" not in commands  # shared with the model
    control = cfg.control_config("none")
    for who, config, prefix in ((cfg, cfg, ""), (control, control, "controls.none.")):
        train = commands[f"{prefix}extend.train"]
        assert train[train.index("--config") + 1] == str(
            who.stage_dir("extend_train") / "train_config.yaml"
        )
        parsed = eval_stage.parse_command(commands[f"{prefix}extend.eval.perplexity"])
        assert parsed.config == config.eval_config("perplexity", extended=True)
        assert parsed.args.model == who.stage_dir("extend_export")
    parsed = eval_stage.parse_command(commands["long_context"])
    assert parsed.config == cfg.long_context_config()
    assert parsed.args.model == [cfg.stage_dir("extend_export"), control.stage_dir("extend_export")]
