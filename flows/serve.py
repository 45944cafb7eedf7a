"""`python -m flows serve`: the `bringup/bringup` and `resume/resume` deployments in one process,
and the automation that restarts a failed or crashed bring-up with `restart_count + 1`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import serve
from prefect.automations import Automation
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture

from flows.bringup import bringup
from flows.resume import resume

AUTOMATION_NAME = "bringup-restart-on-failure"


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
                parameters={
                    "config": _json_template("{{ flow_run.parameters['config'] | tojson }}"),
                    # a run started with only `config` has no restart_count among its parameters
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


def serve_deployments(run_root: Path, resume_every_s: float, resume_paused: bool) -> None:
    """Register both deployments and the automation, then run flow runs (one at a time)."""
    # explicit: a stopping runner pauses its deployments, and a restart must undo that
    bringup_deployment = bringup.to_deployment(name="bringup", paused=False)
    resume_deployment = resume.to_deployment(
        name="resume",
        interval=timedelta(seconds=resume_every_s),
        parameters={"run_root": str(run_root)},
        paused=resume_paused,
    )
    deployment_id = bringup_deployment.apply()
    upsert_automation(restart_automation(deployment_id))
    print(
        f"[flows] serving bringup/bringup and resume/resume (every {resume_every_s:g}s, "
        f"{'paused' if resume_paused else 'active'}); automation {AUTOMATION_NAME!r}",
        flush=True,
    )
    serve(bringup_deployment, resume_deployment, limit=1)
