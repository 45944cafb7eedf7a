"""Every config of every package (model, data, train, eval, flows) is a `ConfigModel`, so one
mechanism refuses `inf`/`nan` in any float field, nested or in a container, naming the field.
A new config needs an example below (a test fails until it has one), and then every float in it
is poisoned in turn."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ttt_core import ConfigModel

PACKAGES = ("ttt_core", "data_stage", "train_stage", "eval_stage", "serve_stage", "flows")


def _modules():
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.startswith("ttt_core.hf") or ".__main__" in info.name:
                continue  # optional extra (transformers) / entry points that run on import
            yield importlib.import_module(info.name)


def _defined_models() -> dict[str, type[BaseModel]]:
    found = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseModel)
                and obj.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


MODELS = _defined_models()
CONFIGS = {name: cls for name, cls in MODELS.items() if issubclass(cls, ConfigModel)}


def _examples(tmp: Path) -> dict[str, BaseModel]:
    """One valid instance of every config that has fields."""
    from data_stage import CorpusConfig, ShardConfig, TokenizerConfig
    from eval_stage import (
        BenchConfig,
        GenerateConfig,
        LatencyConfig,
        LmEvalConfig,
        LongContextConfig,
        NiahConfig,
        PerplexityConfig,
        PositionLossConfig,
        TrackingConfig,
    )
    from flows.config import PipelineConfig
    from flows.request import BringupRequest
    from serve_stage import ServeConfig
    from train_stage import CurriculumStage, MlflowConfig, TrainConfig
    from ttt_core import ModelConfig

    train = {**TrainConfig.preset_dict("debug_tiny"), "data": tmp, "run_dir": tmp / "run"}
    examples = [
        ModelConfig.from_preset("debug_tiny"),
        CorpusConfig(),
        TokenizerConfig(out=tmp / "tok", vocab_size=300),
        ShardConfig(tokenizer=tmp / "tok", seq_len=8, out=tmp / "shards"),
        CurriculumStage(seq_len=8, steps=1, lr=1e-3),
        MlflowConfig(),
        TrainConfig.model_validate(train),
        PerplexityConfig(data=tmp),
        PositionLossConfig(data=tmp),
        NiahConfig(data=tmp),
        LmEvalConfig(data=tmp),
        LongContextConfig(data=tmp),
        LatencyConfig(),
        BenchConfig(assert_speedup=1.5),
        GenerateConfig(top_p=0.9),
        TrackingConfig(),
        PipelineConfig.from_preset("debug_tiny"),
        BringupRequest(),
        ServeConfig(model=str(tmp), state_dir=tmp / "state"),
    ]
    return {f"{type(e).__module__}.{type(e).__name__}": e for e in examples}


def _has_float(annotation) -> bool:
    if annotation is float:
        return True
    return any(_has_float(arg) for arg in typing.get_args(annotation))


def _poisoned(annotation, good, bad: float):
    """`good` with every float in it replaced by `bad` (a scalar, a tuple/list of floats, an
    Optional float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return bad if float in typing.get_args(annotation) else None
    if origin in (tuple, list):
        return [bad] * max(len(good or ()), 1)
    if origin is typing.Annotated:
        return _poisoned(typing.get_args(annotation)[0], good, bad)
    return bad


def test_every_pydantic_config_is_a_config_model():
    """A model that is a config by name (or lives in a `config` module) without the base would
    let `inf` through: none may."""
    escaped = [
        name
        for name, cls in MODELS.items()
        if not issubclass(cls, ConfigModel)
        and (name.endswith("Config") or ".config." in name or name.endswith("Request"))
        # OpenAI's request bodies: not configs (they name unsupported fields themselves); they
        # refuse inf/nan too (tests/serve_stage/test_http.py)
        and not name.startswith("serve_stage.protocol.")
    ]
    assert not escaped, f"configs not deriving from ttt_core.ConfigModel: {escaped}"


def test_every_config_has_an_example(tmp_path):
    examples = _examples(tmp_path)
    with_fields = {name for name, cls in CONFIGS.items() if cls.model_fields}
    assert with_fields - set(examples) == set(), "add an example for each new config"


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_every_float_of_every_config_refuses_non_finite_values(tmp_path, bad):
    checked = []
    for name, good in _examples(tmp_path).items():
        cls = type(good)
        data = good.model_dump()
        for field, info in cls.model_fields.items():
            if not _has_float(info.annotation):
                continue
            value = _poisoned(info.annotation, data[field], bad)
            with pytest.raises(ValidationError) as caught:
                cls.model_validate({**data, field: value})
            errors = caught.value.errors()
            assert errors[0]["loc"][0] == field, (name, field, errors)
            assert errors[0]["type"] == "finite_number", (name, field, errors)
            checked.append(f"{name}.{field}")
    # The float fields known today are all reached (a poisoning bug would skip them quietly).
    for expected in ("TrainConfig.lr", "TrainConfig.betas", "ModelConfig.eta_base",
                     "ShardConfig.val_fraction", "NiahConfig.depths", "GenerateConfig.top_p",
                     "PipelineConfig.stop_grace_s", "CurriculumStage.lr"):  # fmt: skip
        assert any(c.endswith(expected) for c in checked), expected


def test_a_non_finite_override_of_a_deployment_run_names_its_key(tmp_path):
    """What `prefect deployment run bringup/bringup -p overrides='{"train.model.eta_base":
    Infinity}'` gets: one line naming the key the user wrote."""
    from flows.request import BringupRequest, InvalidRequest, resolve

    request = BringupRequest(preset="debug_tiny", overrides={"train.model.eta_base": math.inf})
    with pytest.raises(
        InvalidRequest,
        match=r"^overrides: train\.model\.eta_base: Input should be a finite number$",
    ):
        resolve(request, tmp_path)
