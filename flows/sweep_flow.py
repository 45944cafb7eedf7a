"""The `sweep` and `sweep-trial` flows: `python -m flows sweep`'s search with every trial a flow run
on the work pool.

`sweep` plans and validates the search (`flows.sweep.plan`, every refusal before any work),
builds the shared data under `<run_root>/sweeps/<name>/`, and runs the Optuna study there
(`flows.trials.TrialLoop`): each trial is a `sweep-trial/sweep-trial` flow run, at most
`concurrency` at once (default: the `train-slots` limit), each holding a `train-slots` slot while
it trains. MLflow gets a parent run `sweep/<name>` with every trial's train_stage run nested
under it; Prefect gets the ranking as the table artifact `sweep-ranking`, updated after every
trial. A pruned trial's flow run ends Cancelled, its message saying why.

Submitting the same sweep again continues its study: finished trials are kept, a trial whose
flow run still trains is waited for, and an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.choices import DEFAULT_PRESET, PresetName
from flows.config import default_mlflow_uri
from flows.request import BringupRequest, resolve, served_location
from flows.search import SearchSpec, SweepError, parse_ranges
from flows.slots import TRAIN_SLOTS, train_slot
from flows.sweep import (
    Sweep,
    best_line,
    check_out,
    finished_points,
    make_spec,
    plan,
    prepare_data,
    train_point,
)
from flows.sweep_report import ranked, ranking_rows, write_outputs
from flows.tracking import PARENT_TAG, ensure_experiment, git_commit
from flows.trials import TrialLoop
from train_stage import TrainOutputs
from ttt_core import Family

TRIAL_DEPLOYMENT = "sweep-trial/sweep-trial"
RANKING_KEY = "sweep-ranking"


def train_slots_limit() -> int:
    """The `train-slots` limit's size on the server, 1 where it does not exist."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(TRAIN_SLOTS).limit
        except ObjectNotFound:
            return 1


class PoolLauncher:
    """Trials as `sweep-trial` flow runs on the work pool, nested under this flow run."""

    def __init__(self, sweep: Sweep, name: str, mlflow: dict[str, str]):
        self.sweep, self.name, self.mlflow = sweep, name, mlflow

    def start(self, number: int, params: dict[str, Any], point: Any) -> UUID:
        mlflow = {**self.mlflow, "run_name": f"sweep/{self.name}/{number}-{point.name}"}
        run = run_deployment(
            TRIAL_DEPLOYMENT,
            parameters={"out": str(self.sweep.out), "spec": self.sweep.spec.model_dump(mode="json"),
                        "params": params, "mlflow": mlflow},
            flow_run_name=f"{self.name}/{number}-{point.name}",
            timeout=0,  # submitted; the loop polls it
        )  # fmt: skip
        return run.id

    def outcome(self, handle: UUID) -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(handle).state
        if state is None or not state.is_final():
            return None
        return (
            "" if state.is_completed() or state.is_cancelled() else f"{state.name}: {state.message}"
        )

    def attrs(self, handle: UUID) -> dict[str, str]:
        return {"flow_run_id": str(handle)}

    def adopt(self, attrs: dict[str, Any]) -> UUID | None:
        if "flow_run_id" not in attrs:
            return None
        handle = UUID(attrs["flow_run_id"])
        return handle if self.outcome(handle) is None else None


@flow(name="sweep-trial", log_prints=True)
def sweep_trial(out: str, spec: dict[str, Any], params: dict[str, Any], mlflow: dict[str, str]):
    """Train one point of a sweep (the `sweep` flow submits these): its trainer's run nested in
    MLflow under the sweep's run; Cancelled when the sweep's pruner stopped it."""
    logger = get_run_logger()
    sweep = plan(SearchSpec(**spec), Path(out))
    point = sweep.point_for(params)
    logger.info("training %s in %s", point.name, point.train.run_dir)
    with train_slot():
        record = train_point(point, sweep.base.nproc, sweep.base.stop_grace_s, logger.info, mlflow)
    if record["status"] == "pruned":
        return Cancelled(message=f"pruned by the sweep's median pruner: {record['note']}")
    if record["status"] == "failed":
        raise RuntimeError(f"{point.name}: training failed (see {point.train.run_dir}/train.log)")
    return {k: record.get(k) for k in ("name", "status", "val_loss", "steps")}


class SweepTracking:
    """The sweep's MLflow parent run; each trial's train_stage run is nested under it."""

    def __init__(self, sweep: Sweep, name: str, mlflow_uri: str, run_root: Path):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri)
        self.experiment_id = ensure_experiment(self.client, sweep.base.name, run_root)
        spec = sweep.spec
        tags = {"sweep.study": spec.study_name(), "sweep.dir": str(sweep.out),
                "prefect.flow_run_id": str(flow_run.id), "git.commit": git_commit() or ""}  # fmt: skip
        self.run_id = self.client.create_run(
            self.experiment_id, run_name=f"sweep/{name}", tags=tags
        ).info.run_id
        params = {"preset": spec.preset, "mixer": sweep.base.mixer, "sampler": spec.sampler,
                  "pruner": spec.pruner, "seed": spec.seed, "trials": spec.target(),
                  **{f"axis.{k}": str(v) for k, v in spec.axes().items()}}  # fmt: skip
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value))
        self.mlflow = {"tracking_uri": mlflow_uri, "experiment": sweep.base.name,
                       "parent_run_id": self.run_id}  # fmt: skip

    def nest(self, sweep: Sweep, records: list[dict[str, Any]]) -> None:
        """Trial runs trained by an earlier sweep flow run move under this one; each is tagged
        with its trial number and how it ended."""
        for record in records:
            run_id = TrainOutputs(sweep.out / "points" / record["name"]).mlflow_run_id()
            if run_id is None:
                continue
            self.client.set_tag(run_id, PARENT_TAG, self.run_id)
            self.client.set_tag(run_id, "sweep.trial", str(record["trial"]))
            self.client.set_tag(run_id, "sweep.status", record["status"])

    def finish(self, sweep: Sweep, records: list[dict[str, Any]], status: str) -> None:
        best = ranked(records)[0] if records else None
        if best is not None and best["val_loss"] is not None:
            self.client.log_metric(self.run_id, "best/val_loss", best["val_loss"])
            self.client.set_tag(self.run_id, "sweep.best", best["name"])
        for file in ("sweep.json", "sweep.md", "sweep.png"):
            if (sweep.out / file).is_file():
                self.client.log_artifact(self.run_id, str(sweep.out / file))
        self.client.set_terminated(self.run_id, status=status)


def publish_ranking(sweep: Sweep, name: str, records: list[dict[str, Any]]) -> None:
    """The ranking as the `sweep-ranking` table artifact, and the files, after each trial."""
    write_outputs(sweep, records)
    create_table_artifact(ranking_rows(sweep, records), key=RANKING_KEY,
                          description=f"sweep {name}: {len(records)} point"
                                      f"{'s' if len(records) != 1 else ''}, best first")  # fmt: skip


@flow(name="sweep", log_prints=True)
def sweep(
    preset: PresetName = DEFAULT_PRESET,
    mixer: Family | None = None,
    grid: dict[str, list[Any]] = {},  # noqa: B006 (never mutated; the form's default)
    ranges: dict[str, str] = {},  # noqa: B006
    sampler: Literal["grid", "tpe"] = "grid",
    trials: int | None = None,
    pruner: Literal["median", "none"] = "median",
    seed: int = 0,
    overrides: dict[str, Any] = {},  # noqa: B006
    name: str | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Search train.* settings of one preset with Optuna, each trial a flow run on the pool.

    Args:
        preset: the pipeline preset every point starts from.
        mixer: the sequence mixer; None: the preset's.
        grid: train.* keys and their values: {"train.lr": [0.001, 0.003]}.
        ranges: train.* keys and bounds for TPE: {"train.lr": "1e-4..1e-2:log"} (`:int` too).
        sampler: grid (every combination once) or tpe (`trials` points).
        trials: how many points TPE trains.
        pruner: median (stop a point whose periodic val loss, every `train.eval_every` steps,
            is worse than the median of earlier trials) or none.
        seed: the sampler's seed.
        overrides: dotted PipelineConfig keys for every point, as `flows run --set`.
        name: the sweep's directory under `<run_root>/sweeps/`; None: `<preset>-<mixer>`.
            The same sweep submitted again continues there.
        concurrency: trials at once; None: the `train-slots` limit.
    """
    spec = make_spec(preset=preset, mixer=mixer, sets=overrides, grid=grid, sampler=sampler,
                     trials=trials, pruner=pruner, seed=seed, ranges=parse_ranges(ranges))  # fmt: skip
    if concurrency is not None and concurrency < 1:
        raise SweepError(f"concurrency must be at least 1, got {concurrency}")
    run_root, mlflow_uri = served_location()
    run_root = run_root.expanduser().resolve()
    if name is None:
        request = BringupRequest(preset=preset, mixer=mixer, overrides=overrides)
        name = f"{preset}-{resolve(request, run_root).mixer}"
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"name {name!r}: letters, digits, '.', '_' and '-' only (a directory)")
    command = f"prefect deployment run sweep/sweep (name {name!r}, study {spec.study_name()})"
    plan_ = plan(spec, run_root / "sweeps" / name, command)
    check_out(plan_)
    logger = get_run_logger()
    limit = concurrency or train_slots_limit()
    logger.info("sweep %s: %d trials, %d at once, in %s", name, spec.target(), limit, plan_.out)
    prepare_data(plan_, logger.info)
    tracking = SweepTracking(plan_, name, mlflow_uri or default_mlflow_uri(run_root), run_root)
    published: list[int] = []

    def on_record(records: list[dict[str, Any]]) -> None:
        publish_ranking(plan_, name, records)
        published.append(len(records))

    loop = TrialLoop(plan_, PoolLauncher(plan_, name, tracking.mlflow), limit, logger.info,
                     on_record)  # fmt: skip
    status = "FAILED"
    try:
        records = loop.run(lambda: finished_points(plan_.out))
        if not published:  # every trial had finished before: this flow run's ranking still
            publish_ranking(plan_, name, records)
        tracking.nest(plan_, records)
        status = "FINISHED" if loop.status_code() == 0 else "FAILED"
    finally:
        tracking.finish(plan_, loop.records(), status)
    logger.info(best_line(plan_, records).removeprefix("[sweep] "))
    if status != "FINISHED":
        failed = [r["name"] for r in records if r["status"] not in ("completed", "pruned")]
        raise RuntimeError(f"sweep {name}: not every trial completed ({', '.join(failed)}); "
                           "see the sweep-ranking artifact")  # fmt: skip
    return {"dir": str(plan_.out), "study": spec.study_name(), "points": len(records),
            "best": ranked(records)[0]["name"] if records else None}  # fmt: skip
