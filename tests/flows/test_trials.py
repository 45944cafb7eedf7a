"""The sweep's trial loop (`flows.trials.TrialLoop`) with a scripted trainer in place of
train_stage: TPE and the median pruner through Optuna's own study, the concurrency bound, and
the continuation of a study a killed loop left with a RUNNING trial."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from flows.search import SearchSpec, parse_range
from flows.sweep import RESULT_FILE, Sweep, plan, prepare_data
from flows.trials import POINT, PRUNE_FILE, TrialLoop, trial_records

STEPS = 4
SETS = {"train.steps": STEPS}


def scripted_losses(lr: float) -> list[float]:
    """A val loss per step, lowest for lr = 1e-2, and the same ordering at every step."""
    import math

    gap = abs(math.log10(lr) + 2)
    return [5.0 - 0.1 * step + gap for step in range(1, STEPS + 1)]


class ScriptedLauncher:
    """Trains a point by writing what train_stage and `train_point` would write (metrics.jsonl
    with a val loss per step, train_summary.json, the result record), `step_s` apart, stopping
    early when the loop's pruner wrote PRUNE_FILE. Records the most trials seen at once."""

    def __init__(self, sweep: Sweep, concurrency: int, step_s: float = 0.1):
        self.sweep, self.step_s = sweep, step_s
        self.pool = ThreadPoolExecutor(max_workers=concurrency + 1)
        self.lock, self.now, self.most = threading.Lock(), 0, 0
        self.started: list[dict[str, Any]] = []
        self.stopped_early: set[str] = set()

    def train(self, point: Any) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        run_dir = point.train.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        losses = scripted_losses(point.params["train.lr"])
        status, steps = "completed", 0
        with open(run_dir / "metrics.jsonl", "a") as metrics:
            for steps, loss in enumerate(losses, 1):
                if (run_dir / PRUNE_FILE).is_file():
                    status = "stopped"
                    self.stopped_early.add(point.name)
                    steps -= 1
                    break
                print(json.dumps({"step": steps, "loss": loss, "val_loss": loss}), file=metrics,
                      flush=True)  # fmt: skip
                time.sleep(self.step_s)
        summary = {"status": status, "val_loss": losses[-1] if status == "completed" else None,
                   "final_loss": losses[steps - 1], "steps": steps}  # fmt: skip
        (run_dir / "train_summary.json").write_text(json.dumps(summary))
        if status == "completed":
            record = {"name": point.name, "params": point.params, "status": status,
                      "key": self.sweep.run_key(point), "wall_s": 0.1, "val_loss": losses[-1],
                      "train_loss": losses[-1], "steps": steps, "resumed_from_step": None,
                      "tokens_per_s": None}  # fmt: skip
            (run_dir / RESULT_FILE).write_text(json.dumps(record))
        with self.lock:
            self.now -= 1

    def start(self, number: int, params: dict[str, Any], point: Any) -> Future:
        self.started.append(dict(params))
        return self.pool.submit(self.train, point)

    def outcome(self, handle: Future) -> str | None:
        if not handle.done():
            return None
        return "" if handle.exception() is None else repr(handle.exception())

    def attrs(self, handle: Future) -> dict[str, str]:
        return {}

    def adopt(self, attrs: dict[str, Any]) -> Future | None:
        return None


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    """debug_tiny's tokenizer and shards, built once; each test copies nothing but points to it."""
    out = tmp_path_factory.mktemp("sweep-data")
    spec = SearchSpec(preset="debug_tiny", sets=SETS, grid={"train.lr": [1e-3]})
    prepare_data(plan(spec, out), lambda _: None)
    return out


def sweep_in(data: Path, tmp_path: Path, spec: SearchSpec) -> Sweep:
    out = tmp_path / "sweep"
    out.mkdir()
    for name in ("tokenizer", "shards", "data.key"):
        (out / name).symlink_to(data / name)
    return plan(spec, out)


def test_tpe_with_the_median_pruner_prunes_worse_trials_and_keeps_the_bound(shared_data, tmp_path):
    spec = SearchSpec(preset="debug_tiny", sets=SETS, ranges={"train.lr": parse_range("1e-4..1:log")},
                      sampler="tpe", trials=8, seed=3)  # fmt: skip
    sweep = sweep_in(shared_data, tmp_path, spec)
    launcher = ScriptedLauncher(sweep, concurrency=2)
    published: list[int] = []
    loop = TrialLoop(sweep, launcher, 2, lambda _: None, lambda r: published.append(len(r)),
                     poll_s=0.005)  # fmt: skip
    records = loop.run(dict)

    study = optuna.load_study(
        study_name=spec.study_name(), storage=f"sqlite:///{sweep.out}/optuna.db"
    )
    states = [t.state for t in study.trials]
    assert len(states) == 8 and TrialState.RUNNING not in states
    assert launcher.most == 2  # two at once, never more
    assert len(published) == 8  # the outputs were refreshed after every trial
    by_name = {r["name"]: r for r in records}
    for trial in study.trials:
        record = by_name[trial.user_attrs[POINT]]
        lr = trial.params["train.lr"]
        assert record["params"]["train.lr"] == pytest.approx(lr)
        reported = trial.intermediate_values
        assert all(v == pytest.approx(scripted_losses(lr)[s - 1]) for s, v in reported.items())
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(scripted_losses(lr)[-1])
            # every periodic val loss but the last, which is the objective
            assert record["status"] == "completed" and sorted(reported) == list(range(1, STEPS))
        else:
            assert trial.state == TrialState.PRUNED and record["status"] == "pruned"
            assert trial.user_attrs[POINT] in launcher.stopped_early
            assert "above the median" in record["note"]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the scripted landscape has trials clearly above the median"
    assert loop.status_code() == 0


def test_a_killed_loop_s_running_trial_is_asked_again_and_the_grid_finishes(shared_data, tmp_path):
    spec = SearchSpec(preset="debug_tiny", sets=SETS, grid={"train.lr": [1e-3, 1e-2, 1e-1]},
                      pruner="none")  # fmt: skip
    sweep = sweep_in(shared_data, tmp_path, spec)
    # A loop killed while trial 0 trained: the study holds it RUNNING.
    study = spec.open_study(sweep.out)
    trial = study.ask(spec.distributions())
    trial.set_user_attr(POINT, sweep.point_for(trial.params).name)
    interrupted = dict(trial.params)

    launcher = ScriptedLauncher(sweep, concurrency=1, step_s=0.0)
    loop = TrialLoop(sweep, launcher, 1, lambda _: None, lambda _: None, poll_s=0.005)
    records = loop.run(dict)

    assert launcher.started[0] == interrupted  # asked again first, with the same values
    assert sorted(p["train.lr"] for p in launcher.started) == [1e-3, 1e-2, 1e-1]
    states = [t.state for t in loop.study.trials]
    assert states == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert sorted(trial_records(loop.study)) == [1, 2, 3]  # the failed one has no record
    assert [r["status"] for r in records] == ["completed"] * 3
    assert loop.status_code() == 0
