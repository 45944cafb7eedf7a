from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.config import PIPELINE_PRESETS, PipelineConfig


@pytest.mark.parametrize("name", sorted(PIPELINE_PRESETS))
def test_presets_resolve_and_round_trip_through_json(name, tmp_path):
    cfg = PipelineConfig.from_preset(name, run_root=tmp_path)
    mixer = "attention" if name == "long_context_cpu" else "ttt_linear"  # its reference
    assert cfg.mixer == mixer and cfg.run_dir == tmp_path.resolve() / f"{name}-{mixer}"
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


def test_a_control_shares_the_data_and_budget_and_lives_under_the_run(tmp_path):
    layers = ["attention", "ttt_linear"]
    cfg = PipelineConfig.from_preset(
        "debug_tiny",
        run_root=tmp_path,
        controls=["none", "attention"],
        train={"steps": 7, "model": {"layer_mixers": layers}},
    )
    for mixer in ("none", "attention"):
        control = cfg.control_config(mixer)
        assert control.run_dir == cfg.run_dir / "controls" / mixer
        assert control.controls == [] and control.mlflow_tracking_uri == cfg.mlflow_tracking_uri
        for stage in ("tokenizer", "shards"):  # the model's data, not built again
            assert control.stage_dir(stage) == cfg.stage_dir(stage)
        assert control.stage_dir("train") == control.run_dir / "train"
        train = control.train_config()
        assert train.data == cfg.train_config().data and train.steps == 7
        assert train.model.mixers == (mixer, mixer)  # the hybrid's layer list is not inherited
        assert train.model.n_layers == cfg.train_config().model.n_layers
    assert PipelineConfig.from_preset("small_cpu").controls == ["none"]
    # a model is not its own control: small_cpu's `none` control is skipped for mixer=none
    assert PipelineConfig.from_preset("small_cpu", mixer="none").controls == []
    both = PipelineConfig.from_preset(
        "small_cpu", mixer="attention", controls=["none", "attention"]
    )
    assert both.controls == ["none"]


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"nproc": 0}, "nproc"),
        ({"vocab_size": 1000}, "vocab_size"),
        ({"train": {"seq_len": 128}}, "seq_len"),
        ({"niah": {"trials": 0}}, "niah"),
        ({"evals": ["perplexity", "bogus"]}, "evals"),
        ({"run_name": "../escape"}, "run_name"),
        ({"controls": ["none", "none"]}, "controls has repeats"),
        ({"controls": ["bogus"]}, "controls"),
        ({"extend": {"steps": 5}}, "set extend_seq_len too"),
        ({"extend_seq_len": 32}, "must be longer than the training length 32"),
        ({"extend_seq_len": 128, "extend": {"seq_len": 64}}, "extend.seq_len is set by"),
        ({"extend_seq_len": 128, "extend": {"lr": float("nan")}}, "lr"),
        ({"long_context": {"lengths": [128, 64]}}, "long_context"),
        ({"long_context": {"sequences": float("inf")}}, "long_context"),
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


def test_an_extension_trains_on_from_the_run_at_the_longer_length(tmp_path):
    cfg = PipelineConfig.from_preset("long_context_cpu", run_root=tmp_path)
    train, extend = cfg.train_config(), cfg.extend_train_config()
    assert (train.seq_len, extend.seq_len) == (256, 1024)
    assert extend.init_from == cfg.stage_dir("train") and extend.steps == 10
    assert extend.data == cfg.stage_dir("extend_shards") == cfg.run_dir / "extend_shards"
    assert extend.lr == train.lr and extend.model == train.model  # the same model, on from it
    assert cfg.extend_shard_config().seq_len == 1024
    assert cfg.eval_config("perplexity", extended=True).data == cfg.stage_dir("extend_shards")
    assert cfg.long_context_config().data == cfg.stage_dir("extend_shards")
    control = cfg.control_config("e2e")
    assert control.long_context is None and control.extend_seq_len == 1024
    assert control.stage_dir("extend_shards") == cfg.stage_dir("extend_shards")  # shared
    assert control.extend_train_config().init_from == control.stage_dir("train")
    assert control.extend_train_config().model.e2e_suffix_layers > 0


def test_cli_refuses_a_set_without_a_value_in_one_line(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "debug_tiny", "--run-root", str(tmp_path), "--set", "train.steps"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "flows: invalid config: --set 'train.steps': expected KEY=VALUE (e.g. train.steps=10)"
    )


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
