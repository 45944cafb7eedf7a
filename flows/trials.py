"""The sweep's ask → train → report → tell loop, one process owning the Optuna study.

Trials train elsewhere (a thread here, or a flow run on the pool: `Launcher`). While one runs,
the loop reads the val losses its trainer appends to `metrics.jsonl` (`train.eval_every`),
reports them to the study, and when the pruner says so writes `PRUNE_FILE` into the point's run
dir; the trainer's launcher stops it there (`sweep.train_point`). A finished trial's record is
kept as its `record` user attribute, so the study alone rebuilds the ranking.

Interrupted sweeps continue: a trial left RUNNING by a killed loop, or stopped at
`train.stop_at`, is asked again with the same params first, and its point resumes from its
latest checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DONE = ("completed", "pruned", "diverged", "failed")  # a trial that will not run again
RESUMABLE = ("stopped", "interrupted")  # asked again by the next run of the sweep
PRUNE_FILE, STOP_FILE = "PRUNE", "STOP"  # asked of a point's trainer by the loop
RECORD_PREFIX, POINT = "record.", "point"  # a study and a trial user attribute


class Launcher(Protocol):
    """Where trials train. `start` returns a handle; `outcome` is None while it runs, else a
    failure message ("" when it ended normally; the point's files say how)."""

    def start(self, number: int, params: dict[str, Any], point: Any) -> Any: ...

    def outcome(self, handle: Any) -> str | None: ...

    def attrs(self, handle: Any) -> dict[str, str]: ...

    def adopt(self, attrs: dict[str, Any]) -> Any | None: ...


@dataclass
class Running:
    number: int
    point: Any  # sweep.Point
    handle: Any
    trial: Any | None  # optuna.Trial; None for one adopted from a killed loop (not pruned)
    reported: set[int] = field(default_factory=set)
    pruned: str | None = None
    started: float = field(default_factory=time.perf_counter)


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val loss) of every periodic evaluation in `<run_dir>/metrics.jsonl`."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("val_loss") is not None:
            found.append((int(record["step"]), float(record["val_loss"])))
    return found


def trial_records(study) -> dict[int, dict[str, Any]]:
    """Trial number -> record, for every trial the loop finished (study user attributes
    `record.<number>`, which any trial state can carry)."""
    records = {}
    for key, record in study.user_attrs.items():
        if key.startswith(RECORD_PREFIX):
            number = int(key.removeprefix(RECORD_PREFIX))
            records[number] = {**record, "trial": number}
    return dict(sorted(records.items()))


def latest_records(study) -> dict[str, dict[str, Any]]:
    """Point name -> the record of its latest finished trial."""
    return {r["name"]: r for r in trial_records(study).values()}


class TrialLoop:
    """Run `spec.target()` trials of `sweep` (a `sweep.Sweep`) through `launcher`, at most
    `concurrency` at once. `sweep.read_record(point)` reads how a trial ended from its files;
    `on_record` is called after every finished trial (outputs, artifacts)."""

    def __init__(
        self,
        sweep: Any,
        launcher: Launcher,
        concurrency: int,
        log: Callable[[str], None],
        on_record: Callable[[list[dict[str, Any]]], None],
        poll_s: float = 1.0,
    ):
        self.sweep, self.spec = sweep, sweep.spec
        self.launcher, self.concurrency = launcher, concurrency
        self.log, self.on_record, self.poll_s = log, on_record, poll_s
        self.study = self.spec.open_study(sweep.out)
        self.running: dict[int, Running] = {}

    # --- bookkeeping ---
    def records(self) -> list[dict[str, Any]]:
        return list(latest_records(self.study).values())

    def done(self) -> int:
        return sum(r["status"] in DONE for r in trial_records(self.study).values())

    def recover(self) -> list[dict[str, Any]]:
        """Trials a killed loop left RUNNING: adopted when still training elsewhere, else failed
        and returned with the stopped ones as the params to ask again first."""
        from optuna.trial import TrialState

        again: dict[str, dict[str, Any]] = {}
        records = latest_records(self.study)
        for name, record in records.items():
            if record["status"] in RESUMABLE:
                again[name] = record["optuna_params"]
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            name = trial.user_attrs.get(POINT)
            handle = self.launcher.adopt(trial.user_attrs)
            if handle is not None and name:
                self.log(f"[sweep] trial {trial.number} ({name}): still training; waiting for it")
                point = self.sweep.point_for(trial.params)
                self.running[trial.number] = Running(trial.number, point, handle, None)
                again.pop(name, None)
                continue
            self.study.tell(trial.number, state=TrialState.FAIL)
            if name and records.get(name, {}).get("status") not in DONE:
                again[name] = trial.params
        return list(again.values())

    # --- one trial ---
    def ask(self, params: dict[str, Any] | None):
        if params is not None:
            self.study.enqueue_trial(params, skip_if_exists=False)
        return self.study.ask(self.spec.distributions())

    def launch(self, trial, finished: dict[str, dict[str, Any]], label: str) -> None:
        try:
            point = self.sweep.point_for(trial.params)
        except ValueError as e:  # a sampled value the config refuses (the bounds resolved)
            record = {"name": str(trial.params), "params": trial.params, "status": "failed",
                      "note": str(e), "val_loss": None}  # fmt: skip
            self.finish(trial.number, record, trial.params)
            return
        trial.set_user_attr(POINT, point.name)
        cached = finished.get(self.sweep.run_key(point))
        if cached is not None:
            record = {**cached, "name": point.name, "params": point.params, "cached": True}
            self.finish(trial.number, record, trial.params)
            return
        (point.train.run_dir / PRUNE_FILE).unlink(missing_ok=True)
        handle = self.launcher.start(trial.number, trial.params, point)
        for key, value in self.launcher.attrs(handle).items():
            trial.set_user_attr(key, value)
        self.log(f"[sweep] trial {trial.number} {label} {point.name}: started")
        self.running[trial.number] = Running(trial.number, point, handle, trial)

    def report(self, run: Running, may_prune: bool = True) -> None:
        """Report new val losses; ask the running trial's trainer to stop when pruned (not
        `may_prune`: the trial has ended, its last values are only recorded)."""
        if run.trial is None or run.pruned:
            return
        for step, loss in val_losses(run.point.train.run_dir):
            if step in run.reported or step >= run.point.train.steps:  # the last: the objective
                continue
            run.reported.add(step)
            run.trial.report(loss, step)
            if may_prune and run.trial.should_prune():
                run.pruned = f"val loss {loss:.4f} at step {step} is above the median"
                (run.point.train.run_dir / PRUNE_FILE).write_text(run.pruned + "\n")
                self.log(f"[sweep] trial {run.number} {run.point.name}: pruning ({run.pruned})")
                return

    def reap(self, run: Running, failure: str) -> None:
        record = self.sweep.read_record(run.point, time.perf_counter() - run.started)
        if run.pruned and record["status"] != "completed":
            record.update(status="pruned", note=run.pruned)
        elif failure and record["status"] in ("completed", "stopped"):
            record.update(status="failed", note=failure)
        elif failure:
            record["note"] = failure
        self.finish(run.number, record, self.study.get_trials(deepcopy=False)[run.number].params)

    def finish(self, number: int, record: dict[str, Any], params: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        record = {**record, "optuna_params": params}
        self.study.set_user_attr(f"{RECORD_PREFIX}{number}", record)
        state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(
            record["status"], TrialState.FAIL
        )
        value = record["val_loss"] if state == TrialState.COMPLETE else None
        self.study.tell(number, value, state=state)
        cached = " (finished earlier)" if record.get("cached") else ""
        val = "—" if record.get("val_loss") is None else f"{record['val_loss']:.4f}"
        self.log(f"[sweep] trial {number} {record['name']}: {record['status']}{cached}, "
                 f"val loss {val}")  # fmt: skip
        self.on_record(self.records())

    # --- the loop ---
    def run(self, finished: Callable[[], dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Trials until the target is met (or every one this run could start has ended);
        `finished()`: run key -> record of points trained to the end by any earlier sweep."""
        again = self.recover()
        budget = self.spec.target() - self.done() - len(self.running)
        started, total = 0, max(budget, 0)
        if total == 0 and not self.running:
            self.log(f"[sweep] every one of the {self.spec.target()} trials has finished")
        while self.running or started < total:
            while len(self.running) < self.concurrency and started < total:
                started += 1
                trial = self.ask(again.pop(0) if again else None)
                self.launch(trial, finished(), f"{started}/{total}")
            for run in list(self.running.values()):
                failure = self.launcher.outcome(run.handle)
                if failure is None:
                    self.report(run)
                    continue
                del self.running[run.number]
                self.report(run, may_prune=False)
                self.reap(run, failure)
            if self.running:
                time.sleep(self.poll_s)
        return self.records()

    def status_code(self) -> int:
        """0 when the target is met and every point's latest trial completed or was pruned."""
        latest = latest_records(self.study).values()
        ok = all(r["status"] in ("completed", "pruned") for r in latest)
        return 0 if ok and self.done() >= self.spec.target() else 1
