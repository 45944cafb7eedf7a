"""The committed docker and kubernetes base job templates (deploy/work-pools/) are what a
`prefect work-pool create --base-job-template FILE` accepts: no worker for them runs here, so
they are checked against Prefect's own rules and rendered with their defaults."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from prefect._internal.schemas.validators import validate_values_conform_to_schema
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.templating import apply_values

TEMPLATES = Path(__file__).resolve().parents[2] / "deploy" / "work-pools"


def defaults(template: dict) -> dict:
    return {k: p["default"] for k, p in template["variables"]["properties"].items()}


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_the_template_is_a_valid_base_job_template(kind):
    template = json.loads((TEMPLATES / f"{kind}.json").read_text())
    # the server's own check: every placeholder is a declared variable
    WorkPoolCreate(name=f"ttt-{kind}", type=kind, base_job_template=template)
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    validate_values_conform_to_schema(defaults(template), template["variables"])
    with pytest.raises(ValueError, match="gpus"):
        validate_values_conform_to_schema({**defaults(template), "gpus": "two"},
                                          template["variables"])  # fmt: skip


def test_an_undeclared_placeholder_is_refused():
    template = json.loads((TEMPLATES / "docker.json").read_text())
    template["job_configuration"]["image"] = "{{ imagee }}"
    with pytest.raises(ValueError, match="imagee"):
        WorkPoolCreate(name="typo", type="docker", base_job_template=template)


def test_rendered_with_defaults_they_request_gpus_and_keep_the_run_root():
    docker = json.loads((TEMPLATES / "docker.json").read_text())
    job = apply_values(docker["job_configuration"], defaults(docker))
    assert job["container_create_kwargs"]["device_requests"][0]["count"] == -1  # an int: all
    assert job["env"] == {"FLOWS_RUN_ROOT": "/runs"} and job["volumes"] == ["/srv/ttt/runs:/runs"]

    k8s = json.loads((TEMPLATES / "kubernetes.json").read_text())
    manifest = apply_values(k8s["job_configuration"], defaults(k8s))["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "runs", "mountPath": "/runs"} in container["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ttt-runs"
    assert manifest["spec"]["backoffLimit"] == 0  # a retry is the automation's, from a checkpoint
