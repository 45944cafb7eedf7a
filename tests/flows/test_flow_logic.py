"""The flow's decisions, without a Prefect server: stage order, rerun rules, the restart cap."""

import os

import pytest

from flows import bringup as bringup_module
from flows.bringup import STAGES, bringup, browsable, call_cached
from flows.config import PipelineConfig
from flows.env import RUN_ROOT_ENV
from flows.record import LOCK_FILE, acquire_lock, lock_owner, release_lock
from flows.request import BringupRequest, resolve


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """The bring-up `bringup.fn(preset="debug_tiny")` works on, served from `tmp_path`."""
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path))
    return resolve(BringupRequest(preset="debug_tiny"), tmp_path)


class FakeBringup:
    """Records which stages ran, in order, and how the run finished."""

    calls: list[str]

    def __init__(self, cfg, request, refresh, restart_count):
        FakeBringup.calls = []
        self.record = type("R", (), {"outputs": {}})()
        self.fail_at = os.environ.get("FAKE_FAIL_AT")

    def __getattr__(self, stage):  # the stage methods; `stage` below decides what happens
        return lambda: {}

    def stage(self, name, run):
        FakeBringup.calls.append(name)
        if name == self.fail_at:
            raise RuntimeError(f"{name} broke")
        self.record.outputs[name] = {"ok": True}

    def finish(self, status, error=None):
        FakeBringup.calls.append(f"finish:{status}:{error}")


def test_stages_run_in_pipeline_order(cfg, monkeypatch):
    monkeypatch.setattr(bringup_module, "Bringup", FakeBringup)
    result = bringup.fn(preset="debug_tiny")
    # debug_tiny has no controls, no extension, no long-context stage
    ran = ("tokenizer", "shards", "train", "bench", "evaluate", "register")
    assert FakeBringup.calls == [*ran, "finish:FINISHED:None"]
    assert (*ran[:-1], "extend", "controls", "compare", "long_context", "register") == STAGES
    assert set(result) == set(ran)
    assert lock_owner(cfg.run_dir) is None  # released


def test_a_failing_stage_stops_the_flow_and_marks_it_failed(cfg, monkeypatch):
    monkeypatch.setattr(bringup_module, "Bringup", FakeBringup)
    monkeypatch.setenv("FAKE_FAIL_AT", "train")
    with pytest.raises(RuntimeError, match="train broke"):
        bringup.fn(preset="debug_tiny")
    assert FakeBringup.calls == [
        "tokenizer",
        "shards",
        "train",
        "finish:FAILED:RuntimeError: train broke",
    ]
    assert lock_owner(cfg.run_dir) is None


def test_only_a_real_prefect_ui_address_is_tagged():
    assert browsable("None/flow-runs/flow-run/1f2e") is None  # a temporary server has no UI
    assert browsable(None) is None
    page = "http://127.0.0.1:4200/flow-runs/flow-run/1f2e"
    assert browsable(page) == page


def test_restarts_over_the_cap_are_cancelled_before_any_work(cfg, monkeypatch):
    monkeypatch.setattr(bringup_module, "Bringup", FakeBringup)
    FakeBringup.calls = []
    state = bringup.fn(preset="debug_tiny", restart_count=cfg.max_restarts + 1)
    assert state.is_cancelled()
    assert "max_restarts=2" in state.message
    assert FakeBringup.calls == [] and not cfg.run_dir.exists()
    assert bringup.fn(preset="debug_tiny", restart_count=cfg.max_restarts) is not None  # at cap
    assert FakeBringup.calls[-1] == "finish:FINISHED:None"


class FakeTask:
    def __init__(self, cached: bool):
        self.options: dict = {}
        self.cached = cached

    def with_options(self, **options):
        task = FakeTask(self.cached)
        task.options = options
        return task

    def __call__(self, return_state, **params):
        name = "Cached" if self.cached and not self.options.get("refresh_cache") else "Completed"
        return type("S", (), {"name": name, "result": lambda _s: {"refresh": self.options}})()


@pytest.mark.parametrize(
    ("valid", "refresh", "forced"), [(True, False, False), (False, False, True), (True, True, True)]
)
def test_missing_outputs_or_refresh_force_a_rerun(valid, refresh, forced):
    result, cached = call_cached(FakeTask(cached=True), valid, refresh, cfg=None)
    assert (result["refresh"] == {"refresh_cache": True}) is forced
    assert cached is not forced


def test_a_live_lock_refuses_a_second_runner_and_a_stale_one_is_ignored(tmp_path):
    (tmp_path / LOCK_FILE).write_text("1\n")  # pid 1 is alive and not us
    with pytest.raises(RuntimeError, match="already running in pid 1"):
        acquire_lock(tmp_path)
    (tmp_path / LOCK_FILE).write_text("999999999\n")
    acquire_lock(tmp_path)
    assert lock_owner(tmp_path) == os.getpid()
    release_lock(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_resume_picks_bring_ups_neither_completed_nor_running(tmp_path):
    from flows.record import BringupRecord, write_record
    from flows.resume import unfinished

    def make(name, status, locked_by=None):
        config = PipelineConfig.from_preset("debug_tiny", run_root=tmp_path, run_name=name)
        write_record(BringupRecord(status=status, config=config))
        if locked_by:
            (config.run_dir / LOCK_FILE).write_text(f"{locked_by}\n")

    make("done", "completed")
    make("failed", "failed")
    make("crashed", "running", locked_by=999999999)  # its process is gone
    make("live", "running", locked_by=os.getpid())
    assert sorted(r.config.run_name for r in unfinished(tmp_path)) == ["crashed", "failed"]


def test_a_missing_baseline_export_fails_evaluate_before_any_eval(tmp_path, monkeypatch):
    """The served restart-cap test fails at the first stage; this pins the evaluate refusal it
    used to reach: a `baseline` with no export is named, with the path, before any eval runs."""
    request = BringupRequest(preset="debug_tiny", overrides={"baseline": "missing"})
    work = object.__new__(bringup_module.Bringup)  # only its config is read before the refusal
    work.cfg = resolve(request, tmp_path)
    monkeypatch.setattr(bringup_module, "export_task", lambda _train, _export: {})
    monkeypatch.setattr(bringup_module, "call_cached", lambda *_a, **_k: pytest.fail("eval ran"))
    missing = tmp_path.resolve() / "missing" / "export"
    with pytest.raises(FileNotFoundError, match=f"baseline 'missing': no export at {missing}"):
        work.evaluate()
