"""The mechanisms every package shares, one module each: dotted overrides, one-line pydantic
errors, telemetry defaults, the pretrained directory as a stage output."""

from __future__ import annotations

import hashlib

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator

from ttt_core import (
    TTTLM,
    ModelConfig,
    PretrainedOutputs,
    deep_merge,
    error_summary,
    flatten_dotted,
    nest_dotted,
    parse_assignments,
    sha256_bytes,
    telemetry_off,
)
from ttt_core.telemetry import TELEMETRY_OFF


def test_dotted_keys_nest_flatten_back_and_merge_into_a_preset():
    flat = {"train.steps": 5, "train.model.mixer": "attention", "nproc": 2}
    nested = nest_dotted(flat)
    assert nested == {"train": {"steps": 5, "model": {"mixer": "attention"}}, "nproc": 2}
    assert flatten_dotted(nested) == flat
    base = {"train": {"steps": 100, "lr": 0.1, "model": {"mixer": "ttt_linear", "dim": 8}}}
    assert deep_merge(base, nested) == {
        "train": {"steps": 5, "lr": 0.1, "model": {"mixer": "attention", "dim": 8}},
        "nproc": 2,
    }
    assert base["train"]["steps"] == 100  # neither input is changed


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"a..b": 1}, "'a..b': empty part"),
        ({"a": 1, "a.b": 2}, "'a' set twice"),
        ({"a.b": 1, "a": 2}, "'a' set twice"),
    ],
)
def test_a_malformed_dotted_key_is_named(flat, message):
    with pytest.raises(ValueError, match=message):
        nest_dotted(flat)


def test_assignments_parse_values_as_yaml_and_refuse_a_missing_equals():
    parsed = parse_assignments(["train.steps=10", "evals=[niah, latency]", "name=x=y"])
    assert parsed == {"train.steps": 10, "evals": ["niah", "latency"], "name": "x=y"}
    with pytest.raises(ValueError, match=r"'train\.steps': expected KEY=VALUE"):
        parse_assignments(["train.steps"])


class Inner(BaseModel):
    steps: int = Field(1, ge=1)
    lr: float = Field(0.1, gt=0)

    @field_validator("lr")
    @classmethod
    def _not_huge(cls, value: float) -> float:
        if value > 10:
            raise ValueError("lr above 10 diverges;\n  lower it")
        return value


class Outer(BaseModel):
    train: Inner = Inner()


def error(cls: type[BaseModel], data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(data)
    return info.value


def test_a_validation_error_is_one_line_naming_the_field():
    assert error_summary(error(Outer, {"train": {"steps": 0}})) == (
        "train.steps: Input should be greater than or equal to 1"
    )
    # a validator's own message, without pydantic's prefix, on one line
    assert error_summary(error(Inner, {"lr": 11})) == "lr: lr above 10 diverges; lower it"
    assert error_summary(error(Inner, {"steps": 0, "lr": -1})) == (
        "steps: Input should be greater than or equal to 1 (+1 more)"
    )


def test_a_nested_error_names_the_key_the_user_gave_or_its_place():
    nested = error(Inner, {"steps": 0})
    assert error_summary(nested, keys=["train.steps", "nproc"]).startswith("train.steps: ")
    assert error_summary(nested, keys=["a.steps", "b.steps"]).startswith("steps: ")  # ambiguous
    assert error_summary(nested, at="train").startswith("train.steps: ")


def test_telemetry_defaults_respect_what_the_user_set():
    env = {"DO_NOT_TRACK": "false"}
    assert telemetry_off(env) is env
    assert env == {**TELEMETRY_OFF, "DO_NOT_TRACK": "false"}
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_sha256_bytes_is_hashlibs_digest():
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_a_pretrained_dir_is_complete_until_a_file_goes_and_its_digest_follows_it(tmp_path):
    torch.manual_seed(0)
    model = TTTLM(ModelConfig.from_preset("debug_tiny", vocab_size=64))
    out = PretrainedOutputs(model.save_pretrained(tmp_path / "m"))
    assert out.complete()
    assert [p.name for p in out.files] == ["config.json", "model.safetensors", "checksums.json"]
    digest = out.digest()
    assert digest == sha256_bytes((out.dir / "checksums.json").read_bytes())
    out.files[1].unlink()
    assert not out.complete()
