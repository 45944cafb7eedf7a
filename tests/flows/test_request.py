"""What a person types: the deployment's form, request → run name, bad keys refused at once."""

import json
from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema

from flows import bringup as bringup_module
from flows.bringup import bringup
from flows.config import PIPELINE_PRESETS
from flows.deploy import PROJECT_ROOT, bringup_deployment, restart_automation
from flows.request import (
    RUN_ROOT_ENV,
    BringupRequest,
    InvalidRequest,
    resolve,
    run_name,
)


def test_the_deployment_form_is_short_typed_and_needs_nothing():
    deployment = bringup_deployment({"FLOWS_RUN_ROOT": "/somewhere"})
    # what a worker runs: this project's own source, the flow's file, the stack's run root
    assert deployment.entrypoint == "flows/bringup.py:bringup"
    assert Path(deployment.storage.to_pull_step()["prefect.deployments.steps.set_working_directory"]
                ["directory"]) == PROJECT_ROOT  # fmt: skip
    assert deployment.job_variables == {"env": {"FLOWS_RUN_ROOT": "/somewhere"}}
    schema = deployment._parameter_openapi_schema.model_dump_for_openapi()
    assert "required" not in schema  # `prefect deployment run bringup/bringup` runs as is
    props = schema["properties"]
    assert list(props) == ["preset", "mixer", "overrides", "refresh"]
    preset = props["preset"]
    enum = preset.get("enum") or schema["definitions"][preset["$ref"].split("/")[-1]]["enum"]
    assert sorted(enum) == sorted(PIPELINE_PRESETS) and preset["default"] == "small_cpu"
    assert props["overrides"]["default"] == {} and props["refresh"]["default"] is False
    assert "dotted" in props["overrides"]["description"]
    # the flow itself still takes restart_count (Prefect's own schema of it lists it)
    assert "restart_count" in parameter_schema(bringup.fn).properties


def test_the_restart_copies_the_request_and_counts_up():
    from uuid import uuid4

    params = restart_automation(uuid4()).actions[0].parameters
    assert set(params) == {"preset", "mixer", "overrides", "restart_count"}  # never `refresh`
    assert "default('small_cpu')" in json.dumps(params["preset"])


def test_run_names_derive_from_what_is_trained():
    plain = BringupRequest(preset="debug_tiny")
    assert run_name(plain, "ttt_linear") == "debug_tiny-ttt_linear"
    steps = BringupRequest(preset="debug_tiny", overrides={"train.steps": 50})
    other = BringupRequest(preset="debug_tiny", overrides={"train.steps": 60})
    names = {run_name(r, "ttt_linear") for r in (plain, steps, other)}
    assert len(names) == 3 and all(n.startswith("debug_tiny-ttt_linear") for n in names)
    # watching and retry settings continue the same run dir
    cadence = BringupRequest(
        preset="debug_tiny",
        overrides={"train.save_every": 5, "baseline": "b", "controls": ["none"]},
    )
    assert run_name(cadence, "ttt_linear") == "debug_tiny-ttt_linear"


def test_resolve_builds_the_requested_bring_up_under_the_served_root(tmp_path):
    request = BringupRequest(
        preset="debug_tiny", mixer="attention", overrides={"train.steps": 7, "niah.trials": 2}
    )
    cfg = resolve(request, tmp_path, "http://127.0.0.1:5999")
    assert cfg.run_root == tmp_path.resolve() and cfg.mlflow_tracking_uri == "http://127.0.0.1:5999"
    assert cfg.train_config().steps == 7 and cfg.niah["trials"] == 2
    assert cfg.mixer == "attention" and cfg.run_name == run_name(request, "attention")
    # `--set mixer=…` (an override) and the parameter name the same run
    via_override = BringupRequest(preset="debug_tiny", overrides={"mixer": "attention"})
    assert resolve(via_override, tmp_path).run_name == "debug_tiny-attention"
    # `name` (the MLflow experiment) is an override too, and names no other run dir
    named = resolve(BringupRequest(preset="debug_tiny", overrides={"name": "other"}), tmp_path)
    assert (named.name, named.run_name) == ("other", "debug_tiny-ttt_linear")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"train.bogus": 1}, "train.bogus"),
        ({"bogus": 1}, "bogus"),
        ({"train.steps": 0}, "train.steps"),
        ({"run_root": "/elsewhere"}, "run_root"),
        ({"train": {"steps": 5}, "train.steps": 5}, "train.steps"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_key(overrides, named, tmp_path):
    with pytest.raises(InvalidRequest) as info:
        resolve(BringupRequest(preset="debug_tiny", overrides=overrides), tmp_path)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_a_malformed_dotted_key_is_an_invalid_request(tmp_path):
    with pytest.raises(InvalidRequest, match=r"'train\.\.steps': empty part"):
        resolve(BringupRequest(preset="debug_tiny", overrides={"train..steps": 1}), tmp_path)


class NoWork:
    def __init__(self, *args):
        raise AssertionError("a stage started for an invalid request")


def test_an_unknown_key_fails_the_flow_before_any_stage(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path))
    monkeypatch.setattr(bringup_module, "Bringup", NoWork)
    with pytest.raises(InvalidRequest, match=r"train\.bogus"):
        bringup.fn(preset="debug_tiny", overrides={"train.bogus": 1})
    assert list(tmp_path.iterdir()) == []
    # the automation's restart of it is cancelled rather than failing again
    state = bringup.fn(preset="debug_tiny", overrides={"train.bogus": 1}, restart_count=1)
    assert state.is_cancelled() and "train.bogus" in state.message


def test_cli_refuses_an_unknown_key_with_exit_2(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--preset", "debug_tiny", "--run-root", str(tmp_path), "--set", "trian.x=1"])
    assert info.value.code == 2
    assert "trian" in capsys.readouterr().err
    assert not (tmp_path / ".prefect").exists()
