from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.config import PIPELINE_PRESETS, PipelineConfig


@pytest.mark.parametrize("name", sorted(PIPELINE_PRESETS))
def test_presets_resolve_and_round_trip_through_json(name, tmp_path):
    cfg = PipelineConfig.from_preset(name, run_root=tmp_path)
    assert cfg.run_dir == tmp_path.resolve() / f"{name}-ttt_linear"
    assert cfg.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert cfg.train_config().model.vocab_size == cfg.vocab_size
    assert PipelineConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_overrides_deep_merge_into_the_train_preset(tmp_path):
    cfg = PipelineConfig.from_preset(
        "debug_tiny",
        run_root=tmp_path,
        train={"steps": 7, "model": {"ops_backend": "autograd"}},
        mixer="attention",
        nproc=2,
    )
    train = cfg.train_config()
    assert train.model.ops_backend == "autograd"
    assert (train.steps, train.batch_size, train.seq_len) == (7, 4, 32)
    assert train.model.mixer == "attention" and train.strategy == "fsdp"
    assert train.data == cfg.run_dir / "shards" and train.run_dir == cfg.run_dir / "train"
    assert cfg.run_name == "debug_tiny-attention"


def test_a_hybrid_stack_is_named_by_its_layers(tmp_path):
    layers = ["attention", "ttt_linear"]
    cfg = PipelineConfig.from_preset(
        "debug_tiny", run_root=tmp_path, train={"model": {"layer_mixers": layers}}
    )
    assert cfg.train_config().model.mixers == tuple(layers)
    assert cfg.run_name == "debug_tiny-attention+ttt_linear"
    assert PipelineConfig.from_preset("debug_tiny", mixer="none").run_name == "debug_tiny-none"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"nproc": 0}, "nproc"),
        ({"vocab_size": 1000}, "vocab_size"),
        ({"train": {"seq_len": 128}}, "seq_len"),
        ({"niah": {"trials": 0}}, "niah"),
        ({"evals": ["perplexity", "bogus"]}, "evals"),
        ({"run_name": "../escape"}, "run_name"),
    ],
)
def test_bad_values_are_errors_naming_the_field(overrides, names, tmp_path):
    with pytest.raises(ValidationError, match=names):
        PipelineConfig.from_preset("debug_tiny", run_root=tmp_path, **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="debug_tiny"):
        PipelineConfig.from_preset("huge")


def test_eval_configs_point_at_the_shards(tmp_path):
    cfg = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path)
    assert cfg.eval_config("perplexity").data == Path(cfg.run_dir / "shards")
    assert cfg.eval_config("latency") == cfg.latency


def test_cli_set_values_are_yaml_under_dotted_keys():
    from flows.cli import parse_sets

    assert parse_sets(["train.steps=10", "evals=[perplexity, niah]", "mixer=attention"]) == {
        "train.steps": 10,
        "evals": ["perplexity", "niah"],
        "mixer": "attention",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_sets(["train.steps"])


def test_cli_refuses_a_bad_value_with_exit_2_naming_it(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "debug_tiny", "--run-root", str(tmp_path), "--set", "nproc=0"])
    assert info.value.code == 2
    assert "nproc" in capsys.readouterr().err
    assert not (tmp_path / ".prefect").exists()  # refused before anything was set up


def test_the_train_preset_tuned_for_the_mixer_applies_and_explicit_values_win(tmp_path):
    from flows.request import BringupRequest, resolve
    from train_stage.config import TRAIN_PRESETS

    tuned = TRAIN_PRESETS["small_cpu"]["tuned"]
    for mixer in ("ttt_linear", "attention", "none"):
        cfg = PipelineConfig.from_preset("small_cpu", run_root=tmp_path, mixer=mixer)
        assert cfg.train_config().lr == tuned[mixer]["lr"]
        request = BringupRequest(preset="small_cpu", mixer=mixer)
        assert resolve(request, tmp_path).train_config().lr == tuned[mixer]["lr"]
        explicit = BringupRequest(preset="small_cpu", mixer=mixer, overrides={"train.lr": 0.0123})
        assert resolve(explicit, tmp_path).train_config().lr == 0.0123
    # a hybrid stack is no single mixer: it keeps the recipe's own values
    hybrid = {"model": {"layer_mixers": ["attention", "ttt_linear", "ttt_linear", "ttt_linear"]}}
    cfg = PipelineConfig.from_preset("small_cpu", run_root=tmp_path, train=hybrid)
    assert cfg.train_config().lr == TRAIN_PRESETS["small_cpu"]["lr"]
