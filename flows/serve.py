"""`python -m flows serve`: the `bringup/bringup`, `resume/resume`, `long-context/long-context`
and `serve/serve` deployments in one process, and the automation that restarts a failed or crashed bring-up with
`restart_count + 1`."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import serve
from prefect.automations import Automation
from prefect.deployments.runner import RunnerDeployment
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture

from flows.bringup import bringup
from flows.choices import DEFAULT_PRESET
from flows.env import MLFLOW_URI_ENV, RUN_ROOT_ENV
from flows.long_context import long_context
from flows.model_server import serve_model
from flows.resume import resume

AUTOMATION_NAME = "bringup-restart-on-failure"
# The request parameters a restart copies, with the Jinja literal of each one's default.
RESTARTED_PARAMETERS = {"preset": f"'{DEFAULT_PRESET}'", "mixer": "none", "overrides": "{}"}
INTERNAL_PARAMETERS = ("restart_count",)


def _json_template(template: str) -> dict:
    """A Jinja template whose rendered text is parsed as JSON, so numbers and dicts keep their
    types in the new run's parameters."""
    return {"__prefect_kind": "json", "value": {"__prefect_kind": "jinja", "template": template}}


def restart_automation(deployment_id: UUID) -> Automation:
    return Automation(
        name=AUTOMATION_NAME,
        description="Run bringup again (resuming from its checkpoint) after a failure or crash",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "bringup"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                # the failed run's request again (a parameter it was started without stays at its
                # default), with restart_count + 1; never `refresh`: a restart resumes
                parameters={
                    **{
                        name: _json_template(
                            f"{{{{ flow_run.parameters['{name}'] | default({default}) | tojson }}}}"
                        )
                        for name, default in RESTARTED_PARAMETERS.items()
                    },
                    "restart_count": _json_template(
                        "{{ (flow_run.parameters['restart_count'] | default(0)) + 1 }}"
                    ),
                },
            )
        ],
    )


def upsert_automation(automation: Automation) -> Automation:
    """Create the automation, or replace the trigger and actions of the one with its name."""
    try:
        existing = Automation.read(name=automation.name)
    except ValueError:
        return automation.create()
    existing.trigger, existing.actions = automation.trigger, automation.actions
    existing.description, existing.enabled = automation.description, True
    existing.update()
    return existing


def bringup_deployment() -> RunnerDeployment:
    """`bringup/bringup` with the form a person fills in: `restart_count` stays a parameter of
    the flow (the automation and `resume` pass it; JSON schemas accept properties they do not
    list) but is dropped from the deployment's schema, so the UI and CLI never offer it."""
    # explicit: a stopping runner pauses its deployments, and a restart must undo that
    deployment = bringup.to_deployment(name="bringup", paused=False)
    schema = deployment._parameter_openapi_schema  # no public setter; what apply() registers
    for name in INTERNAL_PARAMETERS:
        schema.properties.pop(name)
    return deployment


def serve_deployments(
    run_root: Path, mlflow_uri: str | None, resume_every_s: float, resume_paused: bool
) -> None:
    """Register the deployments and the automation, then run flow runs (one at a time), each
    under `run_root` and logging to `mlflow_uri` (None: the run root's SQLite store) whatever
    directory the person who started it was in."""
    os.environ[RUN_ROOT_ENV] = str(run_root)
    if mlflow_uri:
        os.environ[MLFLOW_URI_ENV] = mlflow_uri
    deployment = bringup_deployment()
    resume_deployment = resume.to_deployment(
        name="resume",
        interval=timedelta(seconds=resume_every_s),
        parameters={"run_root": str(run_root)},
        paused=resume_paused,
    )
    long_context_deployment = long_context.to_deployment(name="long-context", paused=False)
    serve_deployment = serve_model.to_deployment(name="serve", paused=False)
    deployment_id = deployment.apply()
    upsert_automation(restart_automation(deployment_id))
    print(
        f"[flows] serving bringup/bringup, long-context/long-context, serve/serve and resume/resume (every "
        f"{resume_every_s:g}s, {'paused' if resume_paused else 'active'}); automation "
        f"{AUTOMATION_NAME!r}",
        flush=True,
    )
    serve(deployment, resume_deployment, long_context_deployment, serve_deployment, limit=1)
