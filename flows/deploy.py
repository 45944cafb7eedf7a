"""`python -m flows deploy`: the work pool, the `train-slots` limit, the deployments and the
restart automation, created or updated in place against the Prefect server `PREFECT_API_URL`
names. A worker (`prefect worker start --pool ttt-local`, which `flows up` starts) runs them.

- pool `ttt-local` (type `process`): each flow run in a process of its own, at most
  `pool_limit` at once;
- global concurrency limit `train-slots` (default: the GPUs, 1 on CPU): the training stage
  holds one slot while torchrun runs, so concurrent bring-ups queue for the machine;
- deployments `bringup/bringup`, `resume/resume` (interval), `long-context/long-context`,
  `serve/serve`, `sweep/sweep` and the `sweep-trial/sweep-trial` runs it submits, all pulled
  from this project's own source directory;
- automation `bringup-restart-on-failure`: a failed or crashed bring-up runs again with
  `restart_count + 1`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import Flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.deployments.runner import RunnerDeployment
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from flows.bringup import bringup
from flows.choices import DEFAULT_PRESET, POOL_NAME
from flows.env import MLFLOW_URI_ENV, RUN_ROOT_ENV, UI_ENV
from flows.long_context import long_context
from flows.model_server import serve_model
from flows.resume import resume
from flows.slots import TRAIN_SLOTS
from flows.sweep_flow import sweep, sweep_trial

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the source every deployment pulls
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


def ensure_pool(pool: str, limit: int) -> None:
    """The process work pool `pool` with Prefect's default process job template, at most
    `limit` flow runs at once (created, or its limit updated)."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type=ProcessWorker.type, concurrency_limit=limit,
                           base_job_template=ProcessWorker.get_default_base_job_template()),
            overwrite=True,
        )  # fmt: skip


def ensure_train_slots(slots: int) -> None:
    """The global concurrency limit `train-slots` with `slots` slots (created, or resized)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAIN_SLOTS)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=TRAIN_SLOTS, limit=slots)
            )
            return
        client.update_global_concurrency_limit(
            TRAIN_SLOTS, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
        )


def from_source(flow: Flow, name: str, env: dict[str, str], **kwargs) -> RunnerDeployment:
    """`flow` as deployment `name`, pulled from PROJECT_ROOT by the worker and run with `env`.
    Always unpaused unless `paused` is passed: applying again must undo an earlier pause."""
    module = Path(flow.fn.__code__.co_filename).resolve().relative_to(PROJECT_ROOT)
    source = Flow.from_source(str(PROJECT_ROOT), f"{module}:{flow.fn.__name__}")
    kwargs.setdefault("paused", False)
    return source.to_deployment(name=name, job_variables={"env": env}, **kwargs)


def bringup_deployment(env: dict[str, str]) -> RunnerDeployment:
    """`bringup/bringup` with the form a person fills in: `restart_count` stays a parameter of
    the flow (the automation and `resume` pass it; JSON schemas accept properties they do not
    list) but is dropped from the deployment's schema, so the UI and CLI never offer it."""
    deployment = from_source(bringup, "bringup", env)
    schema = deployment._parameter_openapi_schema  # no public setter; what apply() registers
    for name in INTERNAL_PARAMETERS:
        schema.properties.pop(name)
    return deployment


def deploy(
    run_root: Path,
    mlflow_uri: str | None,
    mlflow_ui: str | None,
    resume_every_s: float,
    resume_paused: bool,
    pool_limit: int,
    train_slots: int,
) -> list[str]:
    """Create or update everything the module docstring lists; every flow run works under
    `run_root` and logs to `mlflow_uri` (None: the run root's SQLite store), whichever directory
    it was started from. Returns the deployments' names."""
    env = {RUN_ROOT_ENV: str(run_root)}
    env.update({k: v for k, v in ((MLFLOW_URI_ENV, mlflow_uri), (UI_ENV, mlflow_ui)) if v})
    ensure_pool(POOL_NAME, pool_limit)
    ensure_train_slots(train_slots)
    deployments = [
        bringup_deployment(env),
        from_source(resume, "resume", env, interval=timedelta(seconds=resume_every_s),
                    parameters={"run_root": str(run_root)}, paused=resume_paused),
        from_source(long_context, "long-context", env),
        from_source(serve_model, "serve", env),
        from_source(sweep, "sweep", env),
        from_source(sweep_trial, "sweep-trial", env),
    ]  # fmt: skip
    ids = [d.apply(work_pool_name=POOL_NAME) for d in deployments]
    upsert_automation(restart_automation(ids[0]))
    return [f"{d.flow_name}/{d.name}" for d in deployments]
